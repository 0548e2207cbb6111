//! The registry's vocabulary: names that parse instead of being validated later, and the views
//! the API returns.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::RegistryError;
use super::onnx::ModelSignature;
use crate::burnml::Architecture;

/// 1-128 of `A-Za-z0-9._-`, starting with a letter or digit: what names a model or a dataset.
pub fn is_plain_name(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && value.as_bytes()[0].is_ascii_alphanumeric()
}

/// A model's name inside its tenant: 1-128 of `A-Za-z0-9._-`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelName(String);

impl ModelName {
    pub fn parse(value: &str) -> Result<Self, RegistryError> {
        if is_plain_name(value) { Ok(Self(value.to_owned())) } else { Err(RegistryError::InvalidModelName) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name from a URL: one that cannot exist is simply not found.
    pub fn lookup(value: &str) -> Result<Self, RegistryError> {
        Self::parse(value).map_err(|_| RegistryError::ModelNotFound(value.to_owned()))
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An alias: 1-63 of `a-z0-9_-`, starting with a letter (so it never looks like a version).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AliasName(String);

impl AliasName {
    pub fn parse(value: &str) -> Result<Self, RegistryError> {
        let ok = (1..=63).contains(&value.len())
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
            && value.as_bytes()[0].is_ascii_lowercase();
        if ok { Ok(Self(value.to_owned())) } else { Err(RegistryError::InvalidAlias) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which version a request means: a number, or an alias that resolves to one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionRef {
    Number(i32),
    Alias(AliasName),
}

impl VersionRef {
    pub fn parse(value: &str) -> Result<Self, RegistryError> {
        if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
            // At most nine significant digits, as the schema's pattern says.
            let digits = value.trim_start_matches('0');
            return match digits.parse::<i32>() {
                Ok(n) if n > 0 && digits.len() <= 9 => Ok(VersionRef::Number(n)),
                _ => Err(RegistryError::InvalidVersionNumber),
            };
        }
        AliasName::parse(value).map(VersionRef::Alias).map_err(|_| RegistryError::InvalidVersionRef(value.to_owned()))
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionRef::Number(n) => write!(f, "{n}"),
            VersionRef::Alias(a) => f.write_str(a.as_str()),
        }
    }
}

crate::text_enum! {
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Framework {
        Onnx => "onnx",
        Burn => "burn",
    }
}

/// How a model is served; every field left out takes the server's `[inference]` default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    /// Sessions (worker threads) per loaded version, 1-64.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub instances: Option<usize>,
    /// ONNX Runtime intra-op threads per session, 1-64.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub intra_op_threads: Option<usize>,
    /// Most rows run together by dynamic batching (1 = off), up to 1024.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1024)]
    pub max_batch_size: Option<usize>,
    /// Longest wait of a batch's first request for company, in microseconds (up to 1 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1000000)]
    pub max_queue_delay_us: Option<u64>,
    /// Batch sizes to run at once when reached and nothing else waits: at most 16, each 1-1024.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = batch_sizes)]
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests waiting before new ones are turned away, 1-100000.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000)]
    pub queue_capacity: Option<usize>,
    /// Result cache TTL for this model (needs `deterministic`); 0 = no caching.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_ttl_seconds: Option<u64>,
}

fn batch_sizes() -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, schema::Type};
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(1024)))
        .max_items(Some(16))
        .build()
}

/// What the platform allows any one model (`inference.tenant_max_threads`,
/// `inference.max_cache_ttl_seconds`).
#[derive(Debug, Clone, Copy)]
pub struct ServingLimits {
    pub max_threads: usize,
    pub max_cache_ttl_seconds: u64,
}

impl ServingConfig {
    pub fn check(&self, limits: ServingLimits) -> Result<(), RegistryError> {
        let bad = |what: &'static str| Err(RegistryError::ServingOutOfRange(what));
        if self.instances.is_some_and(|n| !(1..=64).contains(&n)) {
            return bad("instances must be between 1 and 64");
        }
        if self.intra_op_threads.is_some_and(|n| !(1..=64).contains(&n)) {
            return bad("intra_op_threads must be between 1 and 64");
        }
        if self.max_batch_size.is_some_and(|n| !(1..=1024).contains(&n)) {
            return bad("max_batch_size must be between 1 and 1024");
        }
        if self.max_queue_delay_us.is_some_and(|n| n > 1_000_000) {
            return bad("max_queue_delay_us must be at most 1000000");
        }
        if self.queue_capacity.is_some_and(|n| !(1..=100_000).contains(&n)) {
            return bad("queue_capacity must be between 1 and 100000");
        }
        let threads = self.instances.unwrap_or(1) * self.intra_op_threads.unwrap_or(1);
        if threads > limits.max_threads {
            return Err(RegistryError::ServingThreads(limits.max_threads));
        }
        if self.cache_ttl_seconds.is_some_and(|n| n > limits.max_cache_ttl_seconds) {
            return Err(RegistryError::ServingCacheTtl(limits.max_cache_ttl_seconds));
        }
        if self.preferred_batch_sizes.len() > 16 || self.preferred_batch_sizes.iter().any(|n| !(1..=1024).contains(n)) {
            return bad("preferred_batch_sizes takes at most 16 sizes between 1 and 1024");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelView {
    pub id: Uuid,
    #[schema(example = "fraud-detector")]
    pub name: String,
    pub framework: Framework,
    pub description: String,
    pub tags: Vec<String>,
    /// Inference results may be cached (same inputs, same outputs).
    pub deterministic: bool,
    pub serving: ServingConfig,
    /// Alias → version number.
    pub aliases: BTreeMap<String, i32>,
    /// The highest live version, if any.
    pub latest_version: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionView {
    /// Also the artifact's id.
    pub id: Uuid,
    pub model: String,
    pub framework: Framework,
    pub version: i32,
    /// Size of the plaintext artifact.
    pub size_bytes: i64,
    /// SHA-256 of the plaintext artifact, hex.
    pub sha256: String,
    /// ONNX: inputs and outputs (names, OIP datatypes, shapes; -1 = dynamic).
    #[schema(value_type = Option<Object>)]
    #[serde(serialize_with = "keys_sorted")]
    pub signature: Option<ModelSignature>,
    /// Burn: the architecture and configuration the weights belong to.
    #[schema(value_type = Option<Object>)]
    #[serde(serialize_with = "keys_sorted")]
    pub burn: Option<Architecture>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Aliases pointing at this version.
    pub aliases: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Through `serde_json::Value`, whose objects hold their keys sorted: these documents read like
/// `metadata` beside them, whatever the order of the fields that build them.
fn keys_sorted<T: Serialize, S: serde::Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(value).map_err(serde::ser::Error::custom)?.serialize(serializer)
}

/// What the registry keeps about a stored version: enough to fetch and decrypt it.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub view: VersionView,
    pub model_id: Uuid,
    pub object_key: String,
    pub stored_bytes: i64,
    pub tenant_key_id: Uuid,
    pub wrapped_data_key: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::onnx::TensorSpec;

    #[test]
    fn version_refs_parse() {
        assert_eq!(VersionRef::parse("3").unwrap(), VersionRef::Number(3));
        assert!(matches!(VersionRef::parse("production").unwrap(), VersionRef::Alias(_)));
        assert!(VersionRef::parse("0").is_err());
        assert!(VersionRef::parse("99999999999").is_err());
        assert!(VersionRef::parse("Prod!").is_err());
        assert!(VersionRef::parse("").is_err());
    }

    #[test]
    fn a_view_gives_its_documents_keys_in_sorted_order() {
        let tensor = |name: &str| TensorSpec { name: name.into(), datatype: "FP32".into(), shape: vec![-1, 2] };
        let signature =
            ModelSignature { ir_version: 8, opset: Some(13), producer: None, inputs: vec![tensor("x")], outputs: vec![tensor("y")] };
        let burn: Architecture =
            serde_json::from_value(serde_json::json!({ "architecture": "mlp", "config": { "inputs": 2, "hidden": [4], "outputs": 2 } }))
                .unwrap();
        let view = VersionView {
            id: Uuid::nil(),
            model: "m".into(),
            framework: Framework::Onnx,
            version: 1,
            size_bytes: 1,
            sha256: String::new(),
            signature: Some(signature),
            burn: Some(burn),
            metadata: serde_json::json!({}),
            aliases: vec![],
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        let text = serde_json::to_string(&view).unwrap();
        let shape = r#"{"datatype":"FP32","name":"x","shape":[-1,2]}"#;
        assert!(text.contains(&format!(r#""signature":{{"inputs":[{shape}],"ir_version":8,"opset":13,"outputs":"#)), "{text}");
        assert!(text.contains(r#""producer":null}"#), "{text}");
        let config = r#"{"activation":"relu","dropout":0.0,"hidden":[4],"inputs":2,"outputs":2,"task":"classification"}"#;
        assert!(text.contains(&format!(r#""burn":{{"architecture":"mlp","config":{config}}}"#)), "{text}");
    }

    #[test]
    fn names_parse() {
        assert!(ModelName::parse("resnet-50.v2_final").is_ok());
        assert!(ModelName::parse("-x").is_err());
        assert!(ModelName::parse("a/b").is_err());
        assert!(ModelName::parse(&"a".repeat(129)).is_err());
        assert!(AliasName::parse("staging").is_ok());
        assert!(AliasName::parse("1st").is_err());
    }
}
