//! The one list convention, tried on every list: pages in a stable order with no item twice or
//! lost, documented bounds on `limit` and the cursor, and cursors that cannot be forged into
//! anything but a position in the caller's own rows.

use serde_json::{Value, json};

use crate::helpers::{As, assert_problem, spawn_app};

#[tokio::test]
async fn every_list_pages_in_a_stable_order_without_gaps_or_repeats() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let globex = app.tenant_with_members(&admin, "globex").await;
    let owner = app.credential(As::Owner, &acme, &admin).await.unwrap();
    for i in 0..5 {
        let key = json!({ "name": format!("key-{i}"), "role": "inference" });
        assert_eq!(app.post_json("/v1/tenants/acme/api-keys", Some(&owner), &key).await.status(), 201);
        let invite = json!({ "email": format!("person{i}@acme.test"), "role": "auditor" });
        assert_eq!(app.post_json("/v1/tenants/acme/invitations", Some(&owner), &invite).await.status(), 201);
        let model = json!({ "name": format!("model-{i}"), "framework": "onnx" });
        assert_eq!(app.post_json("/v1/tenants/acme/models", Some(&owner), &model).await.status(), 201);
    }
    let lists: [(&str, &str, &str); 5] = [
        ("/v1/tenants", "slug", "platform"),
        ("/v1/tenants/acme/members", "email", "owner"),
        ("/v1/tenants/acme/invitations", "id", "owner"),
        ("/v1/tenants/acme/api-keys", "id", "owner"),
        ("/v1/tenants/acme/models", "name", "owner"),
    ];
    for (path, key, who) in lists {
        let token = if who == "platform" { &admin } else { &owner };
        let everything = app.items(path, token).await;
        assert!(everything.len() >= 2, "{path}: {}", everything.len());
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=2&cursor={c}"),
                None => format!("{path}?limit=2"),
            };
            let page: Value = app.get_as(&url, token).await.json().await.unwrap();
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 2, "{url}");
            paged.extend(items.iter().map(|i| i[key].as_str().unwrap().to_owned()));
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let all: Vec<String> = everything.iter().map(|i| i[key].as_str().unwrap().to_owned()).collect();
        assert_eq!(paged, all, "{path}: pages differ from the whole list");
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "{path}: an item twice");
        assert_eq!(pages, all.len().div_ceil(2), "{path}");

        for bad in ["limit=0", "limit=1001", "limit=-1", "limit=x", "cursor=%00", "cursor=", "cursor=%1F"] {
            assert_problem(app.get_as(&format!("{path}?{bad}"), token).await, 400, "invalid_query").await;
        }
    }
    // A cursor names a position, not a scope: globex's owner replaying acme's cursor still
    // reads globex's keys only.
    let page: Value = app.get_as("/v1/tenants/acme/api-keys?limit=1", &owner).await.json().await.unwrap();
    let cursor = page["next_cursor"].as_str().unwrap();
    let other = app.credential(As::Owner, &globex, &admin).await.unwrap();
    let replay: Value = app.get_as(&format!("/v1/tenants/globex/api-keys?cursor={cursor}"), &other).await.json().await.unwrap();
    assert!(replay["items"].as_array().unwrap().iter().all(|k| !k["name"].as_str().unwrap().starts_with("key-")), "{replay}");
    assert_problem(app.get_as(&format!("/v1/tenants/acme/api-keys?cursor={cursor}"), &other).await, 404, "not_found").await;
}
