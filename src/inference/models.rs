//! Which model versions are loaded: resolution of (tenant, name, version or alias) with a
//! short TTL, lazy loading through the registry's decrypt-into-memory loader shared by
//! concurrent first requests, and eviction of the least recently used above a memory budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::engine::{BurnEngine, Engine, OnnxEngine, OnnxRuntime};
use super::error::InferenceError;
use super::metrics::InferenceMetrics;
use super::protocol::DataType;
use super::worker::{BatchPolicy, EngineFactory, WorkerPool};
use crate::audit::AuditActor;
use crate::request::RequestInfo;
use crate::burnml::{Architecture, Task};
use crate::config::InferenceSettings;
use crate::error::{Code, ErrorCode};
use crate::registry::RegistryService;
use crate::registry::model::{Framework, ModelName, ServingConfig, VersionRef};
use crate::registry::onnx::{ModelSignature, TensorSpec};
use crate::tenancy::TenantId;

/// An input or output as the served model takes or gives it.
#[derive(Debug, Clone)]
pub struct ServedTensor {
    pub name: String,
    pub datatype: DataType,
    /// -1 = any size.
    pub shape: Vec<i64>,
}

/// A version as requests see it: what to call and how to check inputs against it.
pub struct LoadedModel {
    pub tenant: TenantId,
    pub name: String,
    pub version: i32,
    pub version_label: String,
    pub artifact: Uuid,
    pub inputs: Vec<ServedTensor>,
    pub outputs: Vec<ServedTensor>,
    /// Every input and output has a free first dimension: requests may be batched.
    pub batchable: bool,
    /// The engine refuses NaN and infinities (Burn): inputs are checked first, so the client
    /// gets a 400 naming the element rather than a failed run.
    pub finite_inputs: bool,
    pub cache_ttl_seconds: u64,
    pub pool: WorkerPool,
    bytes: u64,
    /// Worker threads it holds (sessions × intra-op threads), counted against its tenant's cap.
    threads: usize,
    last_used: AtomicU64,
}

impl LoadedModel {
    fn touch(&self, epoch: Instant) {
        self.last_used.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The outcome of resolving a name and version, reused for `resolve_ttl` (shared, not copied:
/// it carries the version's signature).
#[derive(Clone)]
pub struct Resolved {
    /// The model's name, shared by every call's audit event.
    pub name: Arc<str>,
    pub artifact: Uuid,
    pub version: i32,
    pub framework: Framework,
    pub signature: Option<ModelSignature>,
    /// Burn versions: the architecture and configuration the weights belong to.
    pub burn: Option<Architecture>,
    pub deterministic: bool,
    pub serving: ServingConfig,
}

type ResolveKey = (Uuid, String, Option<String>);

pub struct ModelManager {
    registry: RegistryService,
    metrics: Arc<InferenceMetrics>,
    runtime: Result<Arc<OnnxRuntime>, String>,
    settings: InferenceSettings,
    epoch: Instant,
    resolved: RwLock<HashMap<ResolveKey, (Instant, Arc<Resolved>)>>,
    loaded: Mutex<HashMap<Uuid, Arc<OnceCell<Arc<LoadedModel>>>>>,
    /// Versions that failed to load, with when and why: refused at once for a while instead of
    /// fetching, decrypting and auditing the same failure on every request.
    failed: Mutex<HashMap<Uuid, (Instant, Code, String)>>,
}

/// How long a failed load is answered from memory before it is tried again.
const FAILED_LOAD_TTL: Duration = Duration::from_secs(10);

pub fn signature_specs(signature: &ModelSignature) -> Result<(Vec<ServedTensor>, Vec<ServedTensor>), InferenceError> {
    let convert = |specs: &[TensorSpec]| {
        specs
            .iter()
            .map(|t| {
                Ok(ServedTensor {
                    name: t.name.clone(),
                    datatype: DataType::parse(&t.datatype)
                        .ok_or_else(|| InferenceError::UnservedDatatype { tensor: t.name.clone(), datatype: t.datatype.clone() })?,
                    shape: t.shape.clone(),
                })
            })
            .collect::<Result<Vec<_>, InferenceError>>()
    };
    Ok((convert(&signature.inputs)?, convert(&signature.outputs)?))
}

/// How a Burn version looks to clients: one FP32 input (`[-1, features]`, or `[-1, channels,
/// length]` for a 1-D convolution) and one FP32 output of `outputs` values per row:
/// `probabilities` (softmax) for a classifier, `predictions` for a regressor.
pub fn burn_specs(architecture: &Architecture) -> (Vec<ServedTensor>, Vec<ServedTensor>) {
    let shape = match architecture {
        Architecture::Conv1d(c) => vec![-1, c.channels as i64, c.length as i64],
        Architecture::Mlp(_) => vec![-1, architecture.input_features() as i64],
    };
    let output = match architecture.task() {
        Task::Classification => "probabilities",
        Task::Regression => "predictions",
    };
    (
        vec![ServedTensor { name: "input".into(), datatype: DataType::Fp32, shape }],
        vec![ServedTensor { name: output.into(), datatype: DataType::Fp32, shape: vec![-1, architecture.outputs() as i64] }],
    )
}

impl ModelManager {
    /// The registry models are resolved and loaded from.
    pub fn registry(&self) -> &RegistryService {
        &self.registry
    }

    pub fn new(
        registry: RegistryService,
        runtime: Result<Arc<OnnxRuntime>, String>,
        settings: InferenceSettings,
        metrics: Arc<InferenceMetrics>,
    ) -> Self {
        Self {
            registry,
            metrics,
            runtime,
            settings,
            epoch: Instant::now(),
            resolved: RwLock::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    pub fn runtime_ready(&self) -> bool {
        self.runtime.is_ok()
    }

    pub fn runtime_error(&self) -> Option<&str> {
        self.runtime.as_ref().err().map(String::as_str)
    }

    pub fn settings(&self) -> &InferenceSettings {
        &self.settings
    }

    /// Resolves a model version, from the short-lived cache when possible. The database path
    /// is boxed: every call awaits this, and only a few need room for a query.
    pub async fn resolve(&self, tenant: TenantId, name: &str, version: Option<&str>) -> Result<Arc<Resolved>, InferenceError> {
        let key: ResolveKey = (tenant.0, name.to_owned(), version.map(str::to_owned));
        if let Some((at, hit)) = self.resolved.read().get(&key)
            && at.elapsed() < Duration::from_millis(self.settings.resolve_ttl_ms)
        {
            return Ok(hit.clone());
        }
        Box::pin(self.resolve_uncached(key, tenant, name, version)).await
    }

    async fn resolve_uncached(
        &self,
        key: ResolveKey,
        tenant: TenantId,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<Resolved>, InferenceError> {
        let ttl = Duration::from_millis(self.settings.resolve_ttl_ms);
        let model = ModelName::lookup(name)?;
        let version_ref = version.map(VersionRef::parse).transpose()?;
        let info = self.registry.serving_info(tenant, &model, version_ref.as_ref()).await?;
        let resolved = Arc::new(Resolved {
            name: Arc::from(name),
            artifact: info.stored.view.id,
            version: info.stored.view.version,
            framework: info.stored.view.framework,
            signature: info.stored.view.signature,
            burn: info.stored.view.burn,
            deterministic: info.deterministic,
            serving: info.serving,
        });
        let mut cache = self.resolved.write();
        if cache.len() > 100_000 {
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        cache.insert(key, (Instant::now(), resolved.clone()));
        Ok(resolved)
    }

    /// Forgets resolutions of a tenant's model (an alias moved, a version was deleted).
    pub fn forget(&self, tenant: TenantId, name: &str) {
        self.resolved.write().retain(|(t, n, _), _| !(*t == tenant.0 && n == name));
    }

    /// The model if it is loaded (marked as used), without waiting for anything. A model whose
    /// engine panicked is forgotten here, and refused as a failed load would be for a while
    /// before it is loaded afresh: input that panics an engine cannot make the server decrypt
    /// and build the model again and again.
    pub fn loaded(&self, resolved: &Resolved) -> Option<Arc<LoadedModel>> {
        let mut loaded = self.loaded.lock();
        let model = loaded.get(&resolved.artifact)?.get()?.clone();
        if model.pool.is_broken() {
            loaded.remove(&resolved.artifact);
            let detail = format!("an engine of {} version {} crashed; it is loaded again shortly", model.name, model.version);
            self.failed.lock().insert(resolved.artifact, (Instant::now(), Code::ServiceUnavailable, detail));
            tracing::warn!(artifact = %resolved.artifact, tenant = %model.tenant.0, "model unloaded after its engine panicked");
            return None;
        }
        model.touch(self.epoch);
        Some(model)
    }

    /// The loaded model, loading it first if needed (once, however many requests ask). The
    /// load runs in a task of its own: a caller that gives up (deadline, disconnect) does not
    /// cancel it for the others.
    pub async fn get(self: &Arc<Self>, tenant: TenantId, name: &str, resolved: &Resolved, actor: &AuditActor) -> Result<Arc<LoadedModel>, InferenceError> {
        if let Some(model) = self.loaded(resolved) {
            return Ok(model);
        }
        // A load that lands in between is found by `get_or_try_init` below.
        let cell = self.loaded.lock().entry(resolved.artifact).or_default().clone();
        if let Some((at, code, detail)) = self.failed.lock().get(&resolved.artifact)
            && at.elapsed() < FAILED_LOAD_TTL
        {
            return Err(InferenceError::RecentlyFailed { code: *code, detail: detail.clone(), retry_after: FAILED_LOAD_TTL.as_secs() });
        }
        let (this, name, resolved, actor) = (self.clone(), name.to_owned(), resolved.clone(), *actor);
        let model = tokio::spawn(async move {
            let loaded = cell.get_or_try_init(|| this.load(tenant, &name, &resolved, &actor)).await.cloned();
            match &loaded {
                Ok(_) => this.evict_over_budget(resolved.artifact, tenant),
                Err(e) if e.code() != Code::NotFound && e.code() != Code::ServiceUnavailable => {
                    this.failed.lock().insert(resolved.artifact, (Instant::now(), e.code(), e.to_string()));
                }
                Err(_) => {}
            }
            loaded
        })
        .await
        .map_err(anyhow::Error::new)??;
        model.touch(self.epoch);
        Ok(model)
    }

    async fn load(&self, tenant: TenantId, name: &str, resolved: &Resolved, actor: &AuditActor) -> Result<Arc<LoadedModel>, InferenceError> {
        // What the version looks like to clients, checked before anything is decrypted.
        enum Runtime {
            Onnx(Arc<OnnxRuntime>),
            Burn(Architecture),
        }
        let (runtime, inputs, outputs) = match resolved.framework {
            Framework::Onnx => {
                let runtime = self.runtime.clone().map_err(InferenceError::RuntimeUnavailable)?;
                let signature =
                    resolved.signature.as_ref().ok_or_else(|| anyhow::anyhow!("version {} of {name} has no signature", resolved.version))?;
                let (inputs, outputs) = signature_specs(signature)?;
                (Runtime::Onnx(runtime), inputs, outputs)
            }
            Framework::Burn => {
                let architecture =
                    resolved.burn.clone().ok_or_else(|| anyhow::anyhow!("version {} of {name} has no Burn architecture", resolved.version))?;
                let (inputs, outputs) = burn_specs(&architecture);
                (Runtime::Burn(architecture), inputs, outputs)
            }
        };
        let model_name = ModelName::parse(name)?;
        let artifact = self
            .registry
            .load(actor.clone(), tenant, &model_name, Some(&VersionRef::Number(resolved.version)), &RequestInfo::default())
            .await?;
        if artifact.version.view.id != resolved.artifact {
            // The model was deleted and re-created under its name since it was resolved.
            return Err(InferenceError::VersionGone { model: name.to_owned(), version: resolved.version });
        }
        // Moved into the factory, which the pool drops once its engines are built: the
        // plaintext is not kept while the model serves.
        let bytes = artifact.bytes;
        let size = bytes.len() as u64;
        let serving = &resolved.serving;
        // Within the tenant's thread cap, whatever the model asked for when the cap was higher.
        let cap = self.settings.tenant_max_threads;
        let intra = serving.intra_op_threads.unwrap_or(self.settings.intra_op_threads).min(cap);
        let instances = serving.instances.unwrap_or(self.settings.instances).min((cap / intra).max(1));
        let factory: EngineFactory = match runtime {
            Runtime::Onnx(runtime) => {
                let input_names: Vec<String> = inputs.iter().map(|t| t.name.clone()).collect();
                let output_types: Vec<(String, DataType)> = outputs.iter().map(|t| (t.name.clone(), t.datatype)).collect();
                Box::new(move || {
                    let session = runtime.session(&bytes, intra)?;
                    Ok(Box::new(OnnxEngine::new(session, input_names.clone(), output_types.clone())) as Box<dyn Engine>)
                })
            }
            Runtime::Burn(architecture) => Box::new(move || {
                let network = crate::burnml::from_bytes(&architecture, &bytes)?;
                Ok(Box::new(BurnEngine::new(network)) as Box<dyn Engine>)
            }),
        };
        let batchable = inputs.iter().chain(&outputs).all(|t| t.shape.first() == Some(&-1));
        let policy = BatchPolicy {
            max_batch_size: serving.max_batch_size.unwrap_or(self.settings.max_batch_size),
            max_queue_delay: Duration::from_micros(serving.max_queue_delay_us.unwrap_or(self.settings.max_queue_delay_us)),
            preferred_sizes: serving.preferred_batch_sizes.clone(),
        };
        let capacity = serving.queue_capacity.unwrap_or(self.settings.queue_capacity);
        let label = format!("{name}-v{}", resolved.version);
        let worker_metrics = self.metrics.worker(tenant, name);
        let pool = tokio::task::spawn_blocking(move || {
            let pool = WorkerPool::start(&label, instances, capacity, policy, batchable, factory, worker_metrics);
            // The plaintext is freed by now: a model's size in pages that no request would
            // reuse soon.
            crate::memory::return_freed();
            pool
        })
            .await
            .map_err(anyhow::Error::new)?
            .map_err(|reason| InferenceError::DoesNotLoad { model: name.to_owned(), version: resolved.version, reason })?;
        tracing::info!(model = name, version = resolved.version, bytes = size, instances, batchable, "model loaded");
        Ok(Arc::new(LoadedModel {
            tenant,
            name: name.to_owned(),
            version: resolved.version,
            version_label: resolved.version.to_string(),
            artifact: resolved.artifact,
            inputs,
            outputs,
            batchable,
            finite_inputs: resolved.framework == Framework::Burn,
            cache_ttl_seconds: if resolved.deterministic {
                serving.cache_ttl_seconds.unwrap_or(self.settings.cache_ttl_seconds).min(self.settings.max_cache_ttl_seconds)
            } else {
                0
            },
            pool,
            bytes: size,
            threads: instances * if resolved.framework == Framework::Onnx { intra } else { 1 },
            last_used: AtomicU64::new(0),
        }))
    }

    /// Drops least recently used models until the loaded bytes fit the budget, and `tenant`'s
    /// least recently used models until its threads fit its cap. A dropped model's workers
    /// finish what they hold and stop; requests holding it still complete.
    fn evict_over_budget(&self, keep: Uuid, tenant: TenantId) {
        let mut loaded = self.loaded.lock();
        let mut ready: Vec<(Uuid, TenantId, u64, usize, u64)> = loaded
            .iter()
            .filter_map(|(k, cell)| cell.get().map(|m| (*k, m.tenant, m.bytes, m.threads, m.last_used.load(Ordering::Relaxed))))
            .collect();
        ready.sort_by_key(|(_, _, _, _, used)| *used);
        let mut total: u64 = ready.iter().map(|(_, _, bytes, _, _)| bytes).sum();
        let mut threads: usize = ready.iter().filter(|(_, t, ..)| *t == tenant).map(|(_, _, _, n, _)| n).sum();
        for (artifact, owner, bytes, n, _) in ready {
            let over_tenant = owner == tenant && threads > self.settings.tenant_max_threads;
            if total <= self.settings.memory_budget_bytes && !over_tenant {
                continue;
            }
            if artifact != keep {
                loaded.remove(&artifact);
                total -= bytes;
                if owner == tenant {
                    threads -= n;
                }
                tracing::info!(%artifact, tenant = %owner.0, "model evicted ({})", if over_tenant { "tenant thread cap" } else { "memory budget" });
            }
        }
    }

    /// Worker threads `tenant`'s loaded versions hold.
    pub fn tenant_threads(&self, tenant: TenantId) -> usize {
        self.loaded.lock().values().filter_map(|cell| cell.get()).filter(|m| m.tenant == tenant).map(|m| m.threads).sum()
    }

    /// Loads, in the background, what an eager alias points at (after the alias moved).
    pub fn preload(self: &Arc<Self>, tenant: TenantId, name: &str, alias: &str) {
        if !self.settings.eager_aliases.iter().any(|a| a == alias) || self.runtime.is_err() {
            return;
        }
        let (manager, name, alias) = (self.clone(), name.to_owned(), alias.to_owned());
        tokio::spawn(async move {
            let system = AuditActor { kind: "system", id: None };
            let loaded = match manager.resolve(tenant, &name, Some(&alias)).await {
                Ok(resolved) => manager.get(tenant, &name, &resolved, &system).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = loaded {
                tracing::warn!(model = name, alias, error = %e, "eager load failed; the first request will try again");
            }
        });
    }

    /// At start: every version behind an eager alias, in every active tenant.
    pub async fn preload_all(self: &Arc<Self>, pool: &sqlx::PgPool) -> Result<usize, InferenceError> {
        let tenants: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE status = 'active'").fetch_all(pool).await?;
        let mut count = 0;
        for tenant in tenants {
            let mut tx = crate::tenancy::db::TenantTx::begin(pool, TenantId(tenant)).await?;
            let aliased: Vec<(String, String)> = sqlx::query_as(
                "SELECT m.name, a.alias FROM model_aliases a JOIN models m ON m.id = a.model_id \
                 WHERE a.tenant_id = $1 AND m.deleted_at IS NULL AND a.alias = ANY($2)",
            )
            .bind(tenant)
            .bind(&self.settings.eager_aliases)
            .fetch_all(tx.conn())
            .await?;
            tx.commit().await?;
            for (name, alias) in aliased {
                self.preload(TenantId(tenant), &name, &alias);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Whether a version is loaded right now (without loading it).
    pub fn is_loaded(&self, artifact: Uuid) -> bool {
        self.loaded.lock().get(&artifact).is_some_and(|c| c.get().is_some())
    }
}
