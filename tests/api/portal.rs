//! `/portal`: the embedded web app's files, its single-page fallback and the headers that
//! confine it.

use crate::helpers::{assert_problem, spawn_app};

fn assert_confined(response: &reqwest::Response) {
    let csp = response.headers()["content-security-policy"].to_str().unwrap();
    for directive in ["default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'"] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
}

#[tokio::test]
async fn the_portal_is_served_under_a_strict_content_security_policy() {
    let app = spawn_app().await;
    let response = app.get("/portal").await;
    assert_eq!(response.status(), 200);
    assert_confined(&response);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let index = response.text().await.unwrap();
    // No inline script: every <script> names its file.
    let scripts: Vec<&str> = index.split("<script").skip(1).collect();
    assert!(!scripts.is_empty(), "{index}");
    for script in &scripts {
        let tag = &script[..script.find('>').unwrap()];
        assert!(tag.contains("src=\"/portal/assets/"), "inline or foreign script: {tag}");
        assert!(script[script.find('>').unwrap() + 1..].trim_start().starts_with("</script>"), "script with a body");
    }

    // Hashed assets are kept for good, with the type their extension says.
    let start = index.find("/portal/assets/").unwrap();
    let asset = &index[start..start + index[start..].find('"').unwrap()];
    let response = app.get(asset).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));

    // A revalidation of an unchanged page is a 304.
    let etag = app.get("/portal/").await.headers()["etag"].clone();
    let revalidated = app.client.get(app.url("/portal/")).header("if-none-match", etag).send().await.unwrap();
    assert_eq!(revalidated.status(), 304);
}

#[tokio::test]
async fn unknown_portal_pages_get_the_app_and_unknown_files_a_404() {
    let app = spawn_app().await;
    let index = app.get("/portal/").await.text().await.unwrap();
    for page in ["/portal/models", "/portal/members/anything/deeper", "/portal/sign-in"] {
        let response = app.get(page).await;
        assert_eq!(response.status(), 200, "{page}");
        assert_confined(&response);
        assert_eq!(response.text().await.unwrap(), index, "{page}");
    }
    // Never HTML in place of a script or a style: a browser would run or apply it.
    assert_problem(app.get("/portal/assets/missing-abc123.js").await, 404, "route_not_found").await;
    assert_problem(app.get("/portal/favicon.ico").await, 404, "route_not_found").await;
    let post = app.client.post(app.url("/portal/models")).send().await.unwrap();
    assert_problem(post, 405, "method_not_allowed").await;
}
