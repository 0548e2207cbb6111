//! What the protocol tells about a model: its metadata (tensors, versions, platform) and
//! whether it can serve.

use serde::Serialize;
use utoipa::ToSchema;

use super::error::InferenceError;
use super::models::{ServedTensor, burn_specs};
use super::service::InferenceService;
use crate::page::{MAX_LIMIT, PageRequest};
use crate::audit::AuditActor;
use crate::registry::model::{Framework, ModelName, VersionRef};
use crate::registry::onnx::TensorSpec;
use crate::tenancy::TenantInfo;

#[derive(Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    #[schema(example = "FP32")]
    pub datatype: String,
    /// -1 = any size.
    pub shape: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    #[schema(example = "onnxruntime_onnx")]
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

impl InferenceService {
    /// The OIP metadata of a model (every version) or of one version or alias.
    pub async fn metadata(&self, tenant: &TenantInfo, name: &str, version: Option<&str>) -> Result<ModelMetadata, InferenceError> {
        let model = ModelName::lookup(name)?;
        let version_ref = version.map(VersionRef::parse).transpose()?;
        let stored = self.models.registry().get_version(tenant, &model, version_ref.as_ref()).await?;
        let versions = match version {
            Some(_) => vec![stored.view.version.to_string()],
            None => {
                // OIP has no paging: the metadata names at most a full page of versions.
                let page = PageRequest { after: None, limit: MAX_LIMIT };
                let versions = self.models.registry().list_versions(tenant, &model, &page).await?;
                versions.items.iter().map(|v| v.version.to_string()).collect()
            }
        };
        let (inputs, outputs): (Vec<TensorMetadata>, Vec<TensorMetadata>) = match &stored.view.burn {
            Some(architecture) => {
                let (inputs, outputs) = burn_specs(architecture);
                let convert = |specs: Vec<ServedTensor>| {
                    specs.into_iter().map(|t| TensorMetadata { name: t.name, datatype: t.datatype.as_str().to_owned(), shape: t.shape }).collect()
                };
                (convert(inputs), convert(outputs))
            }
            None => {
                let convert = |specs: Vec<TensorSpec>| {
                    specs.into_iter().map(|t| TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape }).collect()
                };
                stored.view.signature.map(|s| (convert(s.inputs), convert(s.outputs))).unwrap_or_default()
            }
        };
        Ok(ModelMetadata {
            name: name.to_owned(),
            versions,
            platform: if stored.view.framework == Framework::Onnx { "onnxruntime_onnx" } else { "burn" },
            inputs,
            outputs,
        })
    }

    /// Whether a model can serve now. Ready means servable: a lazily loaded model is loaded
    /// by being asked about.
    pub async fn readiness(&self, tenant: &TenantInfo, name: &str, version: Option<&str>, actor: &AuditActor) -> Result<(), InferenceError> {
        let resolved = self.models.resolve(tenant.id, name, version).await?;
        self.models.get(tenant.id, name, &resolved, actor).await?;
        Ok(())
    }
}
