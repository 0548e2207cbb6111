//! Worker actors: per loaded model version, a few dedicated threads, each owning one engine,
//! fed through one bounded queue. A worker takes a job, lingers up to the batching delay for
//! more jobs with the same trailing shapes, concatenates them along the batch dimension, runs
//! the engine once and splits the outputs back in order. Engines are built once, at start, and
//! nothing the pool keeps can build another: the model's plaintext is not held while it
//! serves. A panicking engine fails the jobs of its run and marks the pool broken: the pool
//! runs nothing more, each worker drops its engine and stops at its next job, and the model is
//! loaded afresh for later calls (`ModelManager::loaded`).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

use super::engine::{Engine, RunInput, RunOutput};
use super::metrics::WorkerMetrics;
use super::protocol::TensorData;
use super::quiet;

/// How long an idle worker polls for its next job while the server is quiet: about two
/// round trips of a small call at one connection.
const POLL_FOR_JOB: Duration = Duration::from_micros(300);

/// Builds one engine; called once per instance while the pool starts, then dropped.
pub type EngineFactory = Box<dyn Fn() -> Result<Box<dyn Engine>, String> + Send>;

#[derive(Debug, Clone)]
pub struct BatchPolicy {
    /// Largest number of rows (first-dimension entries) run together; 1 = no batching.
    pub max_batch_size: usize,
    /// How long the first job of a batch may wait for company.
    pub max_queue_delay: Duration,
    /// Batch sizes worth stopping at early when nothing else is queued.
    pub preferred_sizes: Vec<usize>,
}

#[derive(Debug)]
pub enum WorkError {
    /// The engine refused the inputs or failed.
    Failed(String),
    /// The engine panicked; later calls get a freshly loaded model.
    Crashed,
    /// The job's deadline passed before it ran.
    DeadlineExceeded,
}

pub struct Job {
    /// In the signature's input order: (shape, data).
    pub inputs: Vec<(Vec<usize>, TensorData)>,
    pub deadline: Option<Instant>,
    /// False when the inputs disagree on their first dimension: such a job runs alone.
    pub batchable: bool,
    /// The request's span: the batch that runs this job follows from it.
    pub span: tracing::Span,
    pub reply: oneshot::Sender<Result<Vec<RunOutput>, WorkError>>,
}

impl Job {
    fn rows(&self) -> usize {
        self.inputs.first().and_then(|(s, _)| s.first().copied()).unwrap_or(1)
    }

    fn fits_with(&self, other: &Job) -> bool {
        self.batchable
            && other.batchable
            && self.inputs.len() == other.inputs.len()
            && self.inputs.iter().zip(&other.inputs).all(|((a, da), (b, db))| {
                a.len() == b.len() && a.get(1..) == b.get(1..) && da.datatype() == db.datatype()
            })
    }
}

struct Queue {
    receiver: Mutex<Receiver<Job>>,
    depth: AtomicUsize,
    /// Workers still running.
    alive: AtomicUsize,
    /// An engine panicked: the pool is to be replaced.
    broken: AtomicBool,
}

pub struct WorkerPool {
    sender: SyncSender<Job>,
    queue: Arc<Queue>,
    /// The queue's depth as last submitted, for operators.
    depth_gauge: Gauge,
}

impl WorkerPool {
    /// Builds every engine first (so a model that cannot load fails here, once), then starts
    /// one thread per engine; `factory` is dropped when this returns. Threads end when the pool
    /// is dropped and the queue drains.
    pub fn start(
        label: &str,
        instances: usize,
        capacity: usize,
        policy: BatchPolicy,
        batchable: bool,
        factory: EngineFactory,
        metrics: WorkerMetrics,
    ) -> Result<Self, String> {
        let engines = (0..instances.max(1)).map(|_| factory()).collect::<Result<Vec<_>, _>>()?;
        let (sender, receiver) = sync_channel(capacity.max(1));
        let queue = Arc::new(Queue {
            receiver: Mutex::new(receiver),
            depth: AtomicUsize::new(0),
            alive: AtomicUsize::new(engines.len()),
            broken: AtomicBool::new(false),
        });
        let policy = if batchable { policy } else { BatchPolicy { max_batch_size: 1, ..policy } };
        let depth_gauge = metrics.queue_depth.clone();
        for (i, engine) in engines.into_iter().enumerate() {
            let worker = Worker { queue: queue.clone(), policy: policy.clone(), engine, metrics: metrics.clone() };
            std::thread::Builder::new()
                .name(format!("infer-{label}-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        }
        Ok(Self { sender, queue, depth_gauge })
    }

    /// Queues a job, or hands it back at once when the queue is full (backpressure).
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let depth = self.queue.depth.fetch_add(1, Ordering::Relaxed) + 1;
        match self.sender.try_send(job) {
            Ok(()) => {
                self.depth_gauge.set(depth as i64);
                Ok(())
            }
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                self.queue.depth.fetch_sub(1, Ordering::Relaxed);
                Err(job)
            }
        }
    }

    #[cfg(test)]
    fn queue_depth(&self) -> usize {
        self.queue.depth.load(Ordering::Relaxed)
    }

    /// An engine panicked: this pool is not to be given more calls.
    pub fn is_broken(&self) -> bool {
        self.queue.broken.load(Ordering::Relaxed)
    }
}

struct Worker {
    queue: Arc<Queue>,
    policy: BatchPolicy,
    engine: Box<dyn Engine>,
    metrics: WorkerMetrics,
}

impl Worker {
    fn run(mut self) {
        let mut carried: Option<Job> = None;
        loop {
            let Some(batch) = self.next_batch(&mut carried) else { return };
            if !self.execute(batch) {
                return self.retire(carried);
            }
        }
    }

    /// Once the pool is broken: the engine goes at once (whoever still holds the pool, its
    /// memory is not kept), and the last worker to stop answers what is still queued until
    /// the pool is dropped, so that no caller waits for a worker that is gone.
    fn retire(self, carried: Option<Job>) {
        let Worker { queue, engine, .. } = self;
        drop(engine);
        tracing::error!("an inference worker stops: an engine of its pool panicked, and the model is loaded afresh");
        if let Some(job) = carried {
            let _ = job.reply.send(Err(WorkError::Crashed));
        }
        if queue.alive.fetch_sub(1, Ordering::AcqRel) > 1 {
            return;
        }
        let receiver = queue.receiver.lock().unwrap_or_else(|p| p.into_inner());
        while let Ok(job) = receiver.recv() {
            queue.depth.fetch_sub(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(WorkError::Crashed));
        }
    }

    fn take(&self, receiver: &Receiver<Job>, until: Option<Instant>) -> Option<Job> {
        let job = match until {
            None => {
                let polled = quiet::poll(POLL_FOR_JOB, || match receiver.try_recv() {
                    Ok(job) => Some(Some(job)),
                    Err(TryRecvError::Disconnected) => Some(None),
                    Err(TryRecvError::Empty) => None,
                });
                match polled {
                    Some(job) => job,
                    None => receiver.recv().ok(),
                }
            }
            Some(until) => match receiver.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
            },
        };
        if job.is_some() {
            self.queue.depth.fetch_sub(1, Ordering::Relaxed);
        }
        job
    }

    /// The next batch: the first job (blocking), then whatever compatible jobs arrive within
    /// the batching delay. Holding the receiver while lingering is deliberate: jobs arriving
    /// meanwhile belong in this batch, not on an idle sibling. `None` once the pool is gone.
    fn next_batch(&self, carried: &mut Option<Job>) -> Option<Vec<Job>> {
        let receiver = self.queue.receiver.lock().unwrap_or_else(|p| p.into_inner());
        let first = match carried.take() {
            Some(job) => job,
            None => self.take(&receiver, None)?,
        };
        let mut rows = first.rows();
        let mut batch = vec![first];
        if self.policy.max_batch_size <= 1 {
            return Some(batch);
        }
        let until = Instant::now() + self.policy.max_queue_delay;
        while rows < self.policy.max_batch_size {
            let Some(job) = self.take(&receiver, Some(until)) else { break };
            if !batch[0].fits_with(&job) || rows + job.rows() > self.policy.max_batch_size {
                *carried = Some(job);
                break;
            }
            rows += job.rows();
            batch.push(job);
            if self.policy.preferred_sizes.contains(&rows) && self.queue.depth.load(Ordering::Relaxed) == 0 {
                break;
            }
        }
        Some(batch)
    }

    /// Runs a batch; false once the pool is broken (this engine panicked, now or before).
    fn execute(&mut self, batch: Vec<Job>) -> bool {
        if self.queue.broken.load(Ordering::Relaxed) {
            for job in batch {
                let _ = job.reply.send(Err(WorkError::Crashed));
            }
            return false;
        }
        let live = Self::live(batch);
        if live.is_empty() {
            return true;
        }
        let rows: usize = live.iter().map(Job::rows).sum();
        let span = tracing::info_span!(parent: None, "inference.batch", jobs = live.len(), rows);
        for job in &live {
            span.follows_from(job.span.id());
        }
        let _entered = span.enter();
        self.run_and_answer(live)
    }

    /// The jobs still worth running: a caller that gave up (deadline or disconnect) is owed
    /// no work, and one past its deadline is told so.
    fn live(jobs: Vec<Job>) -> Vec<Job> {
        let now = Instant::now();
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.reply.is_closed() {
                continue;
            }
            if job.deadline.is_some_and(|d| d <= now) {
                let _ = job.reply.send(Err(WorkError::DeadlineExceeded));
                continue;
            }
            live.push(job);
        }
        live
    }

    /// Runs jobs together and answers each. A run of several jobs that fails is run again in
    /// halves, down to the job that fails alone: the rows of one caller (an index past a
    /// vocabulary, say) fail a run that holds others', and the failure is that caller's alone,
    /// for a few more runs than one.
    fn run_and_answer(&mut self, jobs: Vec<Job>) -> bool {
        let rows: usize = jobs.iter().map(Job::rows).sum();
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run_batch(self.engine.as_mut(), &jobs)));
        self.metrics.run_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.batch_rows.observe(rows as f64);
        match outcome {
            Ok(Ok(per_job)) => {
                for (job, outputs) in jobs.into_iter().zip(per_job) {
                    let _ = job.reply.send(Ok(outputs));
                }
                true
            }
            Ok(Err(_)) if jobs.len() > 1 => {
                let mut first = jobs;
                let second = first.split_off(first.len() / 2);
                let (first, second) = (Self::live(first), Self::live(second));
                if !first.is_empty() && !self.run_and_answer(first) {
                    return self.crashed(second);
                }
                second.is_empty() || self.run_and_answer(second)
            }
            Ok(Err(message)) => {
                for job in jobs {
                    let _ = job.reply.send(Err(WorkError::Failed(message.clone())));
                }
                true
            }
            Err(_) => self.crashed(jobs),
        }
    }

    /// After a panic: whatever state the engine was left in is not to be trusted with another
    /// call.
    fn crashed(&mut self, jobs: Vec<Job>) -> bool {
        self.queue.broken.store(true, Ordering::Relaxed);
        for job in jobs {
            let _ = job.reply.send(Err(WorkError::Crashed));
        }
        false
    }
}

/// Runs one job as is, or several concatenated along the first dimension and split back.
fn run_batch(engine: &mut dyn Engine, jobs: &[Job]) -> Result<Vec<Vec<RunOutput>>, String> {
    if jobs.len() == 1 {
        let inputs: Vec<RunInput<'_>> = jobs[0].inputs.iter().map(|(shape, data)| RunInput { shape, data }).collect();
        return Ok(vec![engine.run(&inputs)?]);
    }
    let rows: Vec<usize> = jobs.iter().map(Job::rows).collect();
    let total: usize = rows.iter().sum();
    let mut merged: Vec<(Vec<usize>, TensorData)> = Vec::with_capacity(jobs[0].inputs.len());
    for i in 0..jobs[0].inputs.len() {
        let mut shape = jobs[0].inputs[i].0.clone();
        shape[0] = total;
        let parts: Vec<&TensorData> = jobs.iter().map(|j| &j.inputs[i].1).collect();
        let data = TensorData::concat(&parts).ok_or("inputs of one batch differ in datatype")?;
        merged.push((shape, data));
    }
    let inputs: Vec<RunInput<'_>> = merged.iter().map(|(shape, data)| RunInput { shape, data }).collect();
    let outputs = engine.run(&inputs)?;
    let mut per_job: Vec<Vec<RunOutput>> = jobs.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in outputs {
        if output.shape.first() != Some(&total) {
            return Err("the model's output is not batched along the first dimension".to_owned());
        }
        let inner: usize = output.shape[1..].iter().product();
        let mut start = 0;
        for (j, n) in rows.iter().enumerate() {
            let mut shape = output.shape.clone();
            shape[0] = *n;
            per_job[j].push(RunOutput { shape, data: output.data.slice(start * inner, (start + n) * inner) });
            start += n;
        }
    }
    Ok(per_job)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Doubles its FP32 input; panics on a first element of -1, fails a run holding -2
    /// anywhere; counts how many times it was built and how many rows each run saw.
    struct Doubler {
        runs: Arc<Mutex<Vec<usize>>>,
    }

    impl Engine for Doubler {
        fn run(&mut self, inputs: &[RunInput<'_>]) -> Result<Vec<RunOutput>, String> {
            let TensorData::Fp32(x) = inputs[0].data else { return Err("FP32 only".into()) };
            if x.first() == Some(&-1.0) {
                panic!("poisoned input");
            }
            self.runs.lock().unwrap().push(inputs[0].shape[0]);
            if x.contains(&-2.0) {
                return Err("index -2 is out of range".into());
            }
            Ok(vec![RunOutput { shape: inputs[0].shape.to_vec(), data: TensorData::Fp32(x.iter().map(|v| v * 2.0).collect()) }])
        }
    }

    fn pool(policy: BatchPolicy) -> (WorkerPool, Arc<Mutex<Vec<usize>>>, Arc<AtomicUsize>) {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let built = Arc::new(AtomicUsize::new(0));
        let (r, b) = (runs.clone(), built.clone());
        let factory: EngineFactory = Box::new(move || {
            b.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Doubler { runs: r.clone() }) as Box<dyn Engine>)
        });
        (start(1, 64, policy, factory), runs, built)
    }

    /// A pool of `workers` threads and a queue of `queue` jobs over `factory`'s engines.
    fn start(workers: usize, queue: usize, policy: BatchPolicy, factory: EngineFactory) -> WorkerPool {
        let histogram = || prometheus_client::metrics::histogram::Histogram::new([1.0]);
        let metrics = WorkerMetrics { batch_rows: histogram(), run_seconds: histogram(), queue_depth: Default::default() };
        WorkerPool::start("test", workers, queue, policy, true, factory, metrics).unwrap()
    }

    /// One job at a time, no waiting for a batch.
    fn unbatched() -> BatchPolicy {
        BatchPolicy { max_batch_size: 1, max_queue_delay: Duration::ZERO, preferred_sizes: vec![] }
    }

    fn job(values: Vec<f32>) -> (Job, oneshot::Receiver<Result<Vec<RunOutput>, WorkError>>) {
        let (reply, rx) = oneshot::channel();
        let rows = values.len();
        let inputs = vec![(vec![rows, 1], TensorData::Fp32(values))];
        (Job { inputs, deadline: None, batchable: true, span: tracing::Span::none(), reply }, rx)
    }

    #[tokio::test]
    async fn a_batch_is_split_back_in_order() {
        let policy = BatchPolicy { max_batch_size: 64, max_queue_delay: Duration::from_millis(200), preferred_sizes: vec![] };
        let (pool, runs, _) = pool(policy);
        let mut answers = Vec::new();
        for i in 0..10 {
            let (job, rx) = job((0..=i % 3).map(|k| (i * 10 + k) as f32).collect());
            assert!(pool.submit(job).is_ok());
            answers.push((i, rx));
        }
        for (i, rx) in answers {
            let outputs = rx.await.unwrap().unwrap();
            let expected: Vec<f32> = (0..=i % 3).map(|k| (i * 10 + k) as f32 * 2.0).collect();
            assert_eq!(outputs[0].data, TensorData::Fp32(expected.clone()), "job {i}");
            assert_eq!(outputs[0].shape, vec![expected.len(), 1]);
        }
        let runs = runs.lock().unwrap().clone();
        assert!(runs.len() < 10, "ten queued jobs were not batched: {runs:?}");
        assert_eq!(runs.iter().sum::<usize>(), 19);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_only_the_caller_whose_rows_failed_it() {
        // A long queue delay gathers all four into one run first.
        let policy = BatchPolicy { max_batch_size: 64, max_queue_delay: Duration::from_millis(300), preferred_sizes: vec![] };
        let (pool, runs, _) = pool(policy);
        let mut answers = Vec::new();
        for values in [vec![1.0, 2.0], vec![3.0, -2.0], vec![4.0], vec![5.0]] {
            let (job, rx) = job(values);
            pool.submit(job).ok().unwrap();
            answers.push(rx);
        }
        let answers: Vec<_> = futures::future::join_all(answers.into_iter().map(answer)).await;
        assert!(matches!(&answers[1], Err(WorkError::Failed(message)) if message.contains("out of range")));
        for (i, expected) in [(0, vec![2.0, 4.0]), (2, vec![8.0]), (3, vec![10.0])] {
            let Ok(outputs) = &answers[i] else { panic!("job {i} failed with another's rows: {:?}", answers[i].as_ref().err()) };
            assert_eq!(outputs[0].data, TensorData::Fp32(expected), "job {i}");
        }
        // The failed run of all four, then its halves, then the failed half's.
        assert_eq!(runs.lock().unwrap().clone(), [6, 4, 2, 2, 2], "{:?}", runs.lock().unwrap());
        assert!(!pool.is_broken());
    }

    /// An answer, or a failed test rather than a hung one.
    async fn answer(rx: oneshot::Receiver<Result<Vec<RunOutput>, WorkError>>) -> Result<Vec<RunOutput>, WorkError> {
        tokio::time::timeout(Duration::from_secs(10), rx).await.expect("answered within 10 s").expect("answered, not dropped")
    }

    #[tokio::test]
    async fn a_panicking_engine_fails_its_jobs_and_marks_the_pool_broken() {
        let (pool, _, built) = pool(unbatched());
        assert!(!pool.is_broken());
        let (poisoned, rx) = job(vec![-1.0]);
        pool.submit(poisoned).ok().unwrap();
        assert!(matches!(answer(rx).await, Err(WorkError::Crashed)));
        assert!(pool.is_broken(), "the pool is to be replaced");
        // Its only worker is gone: what is queued now is answered, not left waiting.
        let (late, rx) = job(vec![3.0]);
        pool.submit(late).ok().unwrap();
        assert!(matches!(answer(rx).await, Err(WorkError::Crashed)));
        assert_eq!(pool.queue_depth(), 0);
        assert_eq!(built.load(Ordering::SeqCst), 1, "nothing rebuilt the engine from kept bytes");
    }

    #[tokio::test]
    async fn the_pool_keeps_nothing_that_builds_engines() {
        // Stands for the model's plaintext, which the factory owns.
        let plaintext = Arc::new(vec![0u8; 16]);
        let held = plaintext.clone();
        let factory: EngineFactory = Box::new(move || {
            let _ = held.len();
            Ok(Box::new(Doubler { runs: Arc::new(Mutex::new(Vec::new())) }) as Box<dyn Engine>)
        });
        let pool = start(2, 8, unbatched(), factory);
        assert_eq!(Arc::strong_count(&plaintext), 1, "the pool holds the model's bytes");
        let (fine, rx) = job(vec![2.0]);
        pool.submit(fine).ok().unwrap();
        assert_eq!(rx.await.unwrap().unwrap()[0].data, TensorData::Fp32(vec![4.0]));
    }

    #[tokio::test]
    async fn a_broken_pool_runs_nothing_more_and_drops_its_engines() {
        struct Counted(Doubler, Arc<AtomicUsize>);
        impl Engine for Counted {
            fn run(&mut self, inputs: &[RunInput<'_>]) -> Result<Vec<RunOutput>, String> {
                self.0.run(inputs)
            }
        }
        impl Drop for Counted {
            fn drop(&mut self) {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (runs, dropped) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let (r, d) = (runs.clone(), dropped.clone());
        let factory: EngineFactory = Box::new(move || Ok(Box::new(Counted(Doubler { runs: r.clone() }, d.clone())) as Box<dyn Engine>));
        let pool = start(2, 8, unbatched(), factory);
        let (poisoned, rx) = job(vec![-1.0]);
        pool.submit(poisoned).ok().unwrap();
        assert!(matches!(answer(rx).await, Err(WorkError::Crashed)));
        // Whichever of the two workers takes them, nothing runs on a broken pool.
        for i in 0..4 {
            let (next, rx) = job(vec![i as f32]);
            pool.submit(next).ok().unwrap();
            assert!(matches!(answer(rx).await, Err(WorkError::Crashed)), "call {i}");
        }
        assert!(runs.lock().unwrap().is_empty(), "a broken pool ran {:?}", runs.lock().unwrap());
        // Both workers have met a job since the panic, so both engines are gone, though the
        // pool itself is still held here.
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
        assert_eq!(pool.queue_depth(), 0);
    }

    #[tokio::test]
    async fn expired_jobs_are_not_run_and_a_full_queue_refuses() {
        let (pool, runs, _) = pool(unbatched());
        let (mut late, rx) = job(vec![1.0]);
        late.deadline = Some(Instant::now() - Duration::from_millis(1));
        pool.submit(late).ok().unwrap();
        assert!(matches!(rx.await.unwrap(), Err(WorkError::DeadlineExceeded)));
        assert!(runs.lock().unwrap().is_empty());

        let (sender, _receiver) = sync_channel(1);
        let queue = Queue {
            receiver: Mutex::new(sync_channel(1).1),
            depth: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
        };
        let full = WorkerPool { sender, queue: Arc::new(queue), depth_gauge: Gauge::default() };
        assert!(full.submit(job(vec![1.0]).0).is_ok());
        assert!(full.submit(job(vec![1.0]).0).is_err(), "a second job fits in a queue of one");
    }
}
