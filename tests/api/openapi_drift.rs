#[test]
fn committed_openapi_matches_the_generated_document() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = tessera::api::openapi::spec_json();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date; regenerate it with:\n\n    cargo run --quiet -- openapi --output openapi/openapi.json\n"
    );
}

#[test]
fn every_operation_documents_its_errors_as_problem_json() {
    let spec: serde_json::Value = serde_json::from_str(&tessera::api::openapi::spec_json()).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.contains_key("500"), "{method} {path} does not document 500");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"].get("application/problem+json").is_some(),
                        "{method} {path} {status} is not documented as problem+json"
                    );
                }
            }
        }
    }
}

/// A generated client must be able to build every body the document describes: a choice of
/// kinds names its discriminator in every branch, and no `allOf` joins an object that admits no
/// other property (no body could satisfy both).
#[test]
fn every_schema_can_be_satisfied_and_every_choice_is_tagged() {
    let spec: serde_json::Value = serde_json::from_str(&tessera::api::openapi::spec_json()).unwrap();
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    let resolve = |schema: &serde_json::Value| -> serde_json::Value {
        match schema["$ref"].as_str() {
            Some(reference) => schemas[reference.trim_start_matches("#/components/schemas/")].clone(),
            None => schema.clone(),
        }
    };
    fn walk(value: &serde_json::Value, visit: &mut dyn FnMut(&serde_json::Value)) {
        visit(value);
        match value {
            serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, visit)),
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, visit)),
            _ => {}
        }
    }
    let mut problems = Vec::new();
    walk(&spec, &mut |schema| {
        if let Some(parts) = schema["allOf"].as_array() {
            if parts.len() > 1 && parts.iter().map(&resolve).any(|p| p["additionalProperties"] == false) {
                problems.push(format!("allOf over a closed object: {schema}"));
            }
        }
        if let Some(tag) = schema["discriminator"]["propertyName"].as_str() {
            for branch in schema["oneOf"].as_array().into_iter().flatten().map(&resolve) {
                let required = branch["required"].as_array().is_some_and(|r| r.iter().any(|n| n == tag));
                if branch["properties"].get(tag).is_none() || !required {
                    problems.push(format!("a branch without its `{tag}`: {branch}"));
                }
            }
        }
    });
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
