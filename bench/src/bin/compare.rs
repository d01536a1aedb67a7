//! Celeriac against Celery, side by side on one Redis, one machine, two
//! worker slots each (Celery prefork `-c 2`, Celeriac `--concurrency 2`),
//! acks late and results stored on both. Run it through `bench/compare`,
//! which installs Celery and the toolchains first:
//!
//!     bash bench/compare            # every workload; writes bench/results/
//!     bash bench/compare --quick    # a tenth of the tasks, writes nothing
//!
//! Each workload starts fresh workers for both systems, warms them up,
//! resets their peak-RSS counters, runs, checks every result, and stops
//! them. Beside them, the Redis ceiling: the same number of messages
//! through raw pipelined LPUSH/RPOP (or a BLPOP ping-pong for latency).
//! All keys live under a private prefix, deleted at the end.
//!
//! The `io` workload is the exception to two slots each: every task makes
//! one HTTP GET to a server in this process that answers after 50 ms, and
//! each system runs as it would be deployed for I/O-bound work: Celery
//! prefork `-c 2` and gevent `-c 100` (one row each), Celeriac
//! `--concurrency 100`, as many as the gevent pool (the `web` component, granted `http://127.0.0.1:*`).
//!
//! Short tasks in a guest language: `python-short` runs one sentence's
//! word count on Celery and on the python-text component, from the same
//! source (tasks/python-text/words.py); `js-short` runs the same for
//! JavaScript (tasks/js-text/words.js) on BullMQ (bench/bullmq, one Worker
//! with `concurrency: 2`, in the Celery columns) and on the js-text
//! component. Their Celeriac side runs as variants, each its own worker and
//! table row against the one Celery (or BullMQ) run: a fresh instance per
//! task (the default), and instances reused (the component signed with
//! `reuse`, the worker given `--reuse MODULE`); `same-code` adds a row with
//! reuse and fuel metering off (`--no-fuel MODULE`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use celeriac_bench::{
    DelayServer, Stats, build_examples, build_wasm, delete_prefix, fmt, wait_drained,
};
use celeriac_broker::registry::UploadOptions;
use celeriac_broker::{self as broker, Broker};
use celeriac_client::workflow::{self, Defaults, Spec, TaskSpec};
use celeriac_client::{self as client, SubmitOptions, TaskRequest};
use celeriac_protocol::record::TaskState;
use celeriac_sandbox::{Sandbox, SandboxConfig};
use celeriac_signing::{
    Grants, KeyPair, PublicKey, SignatureFile, TrustStore, generate_keypair, sign_component_with,
};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(about = "Celeriac vs Celery on the same Redis (run via bench/compare)")]
struct Args {
    /// Redis both systems use.
    #[arg(long, env = "BENCH_REDIS", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Python with Celery installed (default: the venv bench/compare makes).
    #[arg(long, env = "BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Run only these workloads (comma-separated); writes no results.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Workload>,
    /// A tenth of the tasks, for a smoke test; writes no results.
    #[arg(long)]
    quick: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Debug)]
#[serde(rename_all = "kebab-case")]
enum Workload {
    Noop,
    Latency,
    Cpu,
    Payload,
    SameCode,
    /// A short Python task (one sentence's word count), the same source on both.
    PythonShort,
    /// A short JavaScript task, the same source on BullMQ and Celeriac.
    JsShort,
    Io,
    Chord,
    /// Celery's own producer (driver.py) against each worker.
    CeleryProducer,
}

const ALL: [Workload; 10] = [
    Workload::Noop,
    Workload::Latency,
    Workload::Cpu,
    Workload::Payload,
    Workload::SameCode,
    Workload::PythonShort,
    Workload::JsShort,
    Workload::Io,
    Workload::Chord,
    Workload::CeleryProducer,
];
/// The chord workload: chords run one after another, timed each.
const CHORD_ROUNDS: usize = 5;
const FIB_N: u64 = 27;
const FIB_27: u64 = 196_418;
const PAYLOAD_BYTES: usize = 64 * 1024;
const SLOTS: &str = "2";
/// The `io` workload: the server's think time, Celery's gevent greenlets,
/// Celeriac's concurrency.
const IO_DELAY: Duration = Duration::from_millis(50);
const GEVENT_SLOTS: &str = "100";
const IO_SLOTS: &str = "100";
/// The short-task workloads' argument, and its word count.
const SENTENCE: &str = "the quick brown fox jumps over the lazy dog";
const SENTENCE_WORDS: u64 = 9;
/// How many tasks a reused instance may serve (the signed manifest's
/// `reuse`, as `celeriac sign --reuse 1000`).
const REUSE: u32 = 1000;

/// How the Celery worker runs its tasks (or, for `js-short`, BullMQ's).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pool {
    /// `-P prefork -c 2`: every Celery workload.
    Prefork,
    /// `-P gevent -c 100`: the practitioner's pool for I/O-bound tasks.
    Gevent,
    /// A BullMQ Worker with `concurrency: 2` (bench/bullmq): BullMQ's own
    /// slots, jobs in flight at once on one event loop. Its docs keep extra
    /// processes (sandboxed processors) for CPU-heavy jobs, which a
    /// sentence's word count is not.
    Bullmq,
}

impl Pool {
    fn name(self) -> &'static str {
        match self {
            Self::Prefork => "prefork",
            Self::Gevent => "gevent",
            Self::Bullmq => "bullmq",
        }
    }

    fn slots(self) -> &'static str {
        match self {
            Self::Prefork | Self::Bullmq => SLOTS,
            Self::Gevent => GEVENT_SLOTS,
        }
    }

    /// What runs the Celeriac-less side: Celery, or BullMQ.
    fn system(self) -> &'static str {
        match self {
            Self::Bullmq => "BullMQ",
            _ => "Celery",
        }
    }

    /// `prefork -c 2` (or `concurrency 2`), as the table shows it.
    fn label(self) -> String {
        match self {
            Self::Bullmq => format!("concurrency {}", self.slots()),
            _ => format!("{} -c {}", self.name(), self.slots()),
        }
    }
}

/// How the Celeriac worker runs a workload's component; each variant is its
/// own worker and table row against the same Celery (or BullMQ) run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Variant {
    /// The default: a fresh instance per task, fuel metered.
    Fresh,
    /// Instances reused: the component signed allowing it (`REUSE`), the
    /// worker permitting it (`--reuse MODULE`).
    Reuse,
    /// Reused, and run without fuel metering (`--no-fuel MODULE`).
    ReuseNoFuel,
}

impl Variant {
    /// For file names.
    fn name(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Reuse => "reuse",
            Self::ReuseNoFuel => "reuse-no-fuel",
        }
    }

    /// As the table names it.
    fn label(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Reuse => "reuse",
            Self::ReuseNoFuel => "reuse + fuel off",
        }
    }

    /// The `celeriac worker` arguments this variant adds for `module`.
    fn worker_args(self, module: &str) -> Vec<String> {
        let flag = |f: &str| [f.to_string(), module.to_string()];
        match self {
            Self::Fresh => Vec::new(),
            Self::Reuse => flag("--reuse").to_vec(),
            Self::ReuseNoFuel => [flag("--reuse"), flag("--no-fuel")].concat(),
        }
    }
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Noop => "noop",
            Self::Latency => "latency",
            Self::Cpu => "cpu",
            Self::Payload => "payload",
            Self::SameCode => "same-code",
            Self::PythonShort => "python-short",
            Self::JsShort => "js-short",
            Self::Io => "io",
            Self::Chord => "chord",
            Self::CeleryProducer => "celery-producer",
        }
    }

    /// The Celery pools this workload runs on: one table row each.
    fn pools(self) -> &'static [Pool] {
        match self {
            Self::Io => &[Pool::Prefork, Pool::Gevent],
            Self::JsShort => &[Pool::Bullmq],
            _ => &[Pool::Prefork],
        }
    }

    /// The Celeriac variants this workload runs: one table row each per pool.
    fn variants(self) -> &'static [Variant] {
        match self {
            Self::SameCode => &[Variant::Fresh, Variant::ReuseNoFuel],
            Self::PythonShort | Self::JsShort => &[Variant::Fresh, Variant::Reuse],
            _ => &[Variant::Fresh],
        }
    }

    /// The module a guest-language workload's tasks go to. Reuse variants
    /// use the same bytes signed as a second module allowing reuse, so the
    /// fresh rows run exactly the default (a manifest without `reuse`).
    fn module(self, v: Variant) -> &'static str {
        let reuse = v != Variant::Fresh;
        match self {
            Self::JsShort if reuse => "js_reuse",
            Self::JsShort => "js",
            _ if reuse => "py_reuse",
            _ => "py",
        }
    }

    /// Whether a row names its Celeriac variant: every row of a workload
    /// with several, but for same-code's fresh row, which predates the
    /// variants and keeps reading as it always has.
    fn names_variant(self, v: Variant) -> bool {
        self.variants().len() > 1 && !(self == Self::SameCode && v == Variant::Fresh)
    }

    /// A warm-up task of a guest-language workload, sent to the variant's
    /// module.
    fn warm_call(self, v: Variant) -> TaskRequest {
        let module = self.module(v);
        match self {
            Self::SameCode => call(&format!("{module}.fib"), json!([1])),
            _ => call(&format!("{module}.word_count"), json!([SENTENCE])),
        }
    }

    /// The Celeriac worker's `--concurrency`.
    fn celeriac_slots(self) -> &'static str {
        match self {
            Self::Io => IO_SLOTS,
            _ => SLOTS,
        }
    }

    fn tasks(self, quick: bool) -> usize {
        let n = match self {
            Self::Noop => 20_000,
            Self::Latency => 1_000,
            Self::Cpu | Self::SameCode => 200,
            Self::Payload => 2_000,
            Self::PythonShort | Self::JsShort => 20_000,
            Self::Io => 5_000,
            Self::Chord => 1_000,
            Self::CeleryProducer => 10_000,
        };
        if quick { n / 10 } else { n }
    }

    fn describe(self, n: usize) -> String {
        match self {
            Self::Noop => format!("{n} × add(i, i), bulk"),
            Self::Latency => format!("{n} × add(i, i), one at a time"),
            Self::Cpu => format!("{n} × fib({FIB_N}); Celeriac in Rust"),
            Self::Payload => format!("{n} × sha256 of 64 KiB"),
            Self::SameCode => format!("{n} × fib({FIB_N}); the same Python on both"),
            Self::PythonShort => {
                format!("{n} × word_count of one sentence, bulk; the same Python on both")
            }
            Self::JsShort => format!(
                "{n} × word_count of one sentence, bulk; the same JavaScript on both, BullMQ in the Celery columns"
            ),
            Self::Io => format!("{n} × HTTP GET ({} ms server)", IO_DELAY.as_millis()),
            Self::Chord => format!(
                "chord of {n} × add(i, i) → sum, submit to callback result (mean of {CHORD_ROUNDS})"
            ),
            Self::CeleryProducer => format!(
                "{n} × add(i, i) queued by Celery's own producer (`apply_async`) before the worker starts; first to last result"
            ),
        }
    }
}

/// What one system did in one workload.
struct Run {
    elapsed: Duration,
    /// Per-task latencies (latency workload only).
    samples: Vec<Duration>,
    mem: Mem,
}

#[derive(Clone, Copy, Default, Serialize)]
struct Mem {
    /// Sum of the worker processes' peak RSS (VmHWM) during the workload.
    rss_kib: u64,
    /// Highest sampled sum of their PSS: shared pages split between the
    /// processes sharing them (fairer to a forking pool).
    pss_kib: u64,
}

#[derive(Serialize)]
struct Row {
    workload: Workload,
    what: String,
    metric: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    celery: f64,
    celeriac: f64,
    /// How many times better Celeriac is (above 1: better).
    advantage: f64,
    ceiling: Option<f64>,
    celery_mem: Mem,
    celeriac_mem: Mem,
    /// The Celery pool, `prefork -c 2` but for one `io` row (BullMQ's
    /// `concurrency 2` for js-short).
    celery_pool: String,
    /// What the Celery columns measured: `Celery`, or `BullMQ` (js-short).
    baseline: &'static str,
    /// The Celeriac worker's `--concurrency`.
    celeriac_concurrency: u32,
    /// How the Celeriac worker ran the component (`fresh` but for the
    /// reuse rows).
    celeriac_variant: Variant,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has no parent")?
        .to_path_buf();
    let python = args
        .python
        .clone()
        .unwrap_or_else(|| root.join("target/toolchains/python/bin/python"));
    ensure!(
        python.is_file(),
        "no Python at {} (bash bench/compare installs one with Celery)",
        python.display()
    );
    let celeriac_bin = std::env::current_exe()?
        .parent()
        .context("binary has no directory")?
        .join("celeriac");
    ensure!(
        celeriac_bin.is_file(),
        "{} is missing: build it with cargo build --release -p celeriac",
        celeriac_bin.display()
    );
    let workloads: Vec<Workload> = if args.only.is_empty() {
        ALL.to_vec()
    } else {
        ALL.into_iter().filter(|w| args.only.contains(w)).collect()
    };
    let js = workloads.contains(&Workload::JsShort);
    let bullmq_dir = root.join("bench/bullmq");
    if js {
        ensure!(
            bullmq_dir.join("node_modules/bullmq").is_dir(),
            "BullMQ is not installed in {} (bash bench/compare runs npm ci there)",
            bullmq_dir.display()
        );
    }

    eprintln!("building the example components…");
    let wasm_dir = build_examples()?;
    let io = workloads.contains(&Workload::Io);
    if io {
        build_wasm(&["web"])?;
    }
    let py_wasm = build_guest_example(&root, &celeriac_bin, &python, "python-text")?;
    let js_wasm = if js {
        Some(build_guest_example(
            &root,
            &celeriac_bin,
            &python,
            "js-text",
        )?)
    } else {
        None
    };

    let run_id = format!("compare-{}", std::process::id());
    let env = Env {
        redis: args.redis.clone(),
        python,
        celeriac_bin,
        celery_dir: root.join("bench/celery"),
        celery_prefix: format!("{run_id}:celery:"),
        celeriac_prefix: format!("{run_id}:celeriac:"),
        bullmq_dir,
        // BullMQ adds its own `:` (its keys are `PREFIX:QUEUE:…`).
        bullmq_prefix: format!("{run_id}:bullmq"),
        scratch: tempfile::tempdir()?,
        server: if io {
            Some(DelayServer::start(IO_DELAY)?)
        } else {
            None
        },
    };
    // One producer doing one thing at a time, as driver.py is for Celery.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let guests = Guests {
        py: py_wasm,
        js: js_wasm,
    };
    let outcome = rt.block_on(run_all(&env, &workloads, args.quick, &wasm_dir, &guests));
    delete_prefix(&args.redis, &format!("{run_id}:"));
    let (rows, versions) = outcome?;

    let report = report(&rows, &versions, &env.redis);
    println!("{report}");
    if args.only.is_empty() && !args.quick {
        write_results(&root, &env, &rows, &report)?;
    }
    Ok(())
}

struct Env {
    redis: String,
    python: PathBuf,
    celeriac_bin: PathBuf,
    celery_dir: PathBuf,
    celery_prefix: String,
    celeriac_prefix: String,
    /// bench/bullmq: the BullMQ worker and driver (js-short).
    bullmq_dir: PathBuf,
    bullmq_prefix: String,
    /// Keys, trust directory, compiled-code cache, worker logs.
    scratch: tempfile::TempDir,
    /// The `io` workload's HTTP server, when that workload runs.
    server: Option<DelayServer>,
}

impl Env {
    fn server(&self) -> anyhow::Result<&DelayServer> {
        self.server.as_ref().context("the io server is not running")
    }
}

/// The guest-language components built by `celeriac build`.
struct Guests {
    /// tasks/python-text.
    py: PathBuf,
    /// tasks/js-text, when js-short runs.
    js: Option<PathBuf>,
}

/// A guest-language example (`tasks/python-text`, `tasks/js-text`), built
/// by the real CLI: componentize-py from the same venv, or node and the
/// example's own node_modules (npm ci by bench/compare).
fn build_guest_example(
    root: &Path,
    celeriac: &Path,
    python: &Path,
    example: &str,
) -> anyhow::Result<PathBuf> {
    let bin = python.parent().context("python has no directory")?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(celeriac)
        .arg("build")
        .arg(root.join("tasks").join(example))
        .env("PATH", path)
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(
        out.status.success(),
        "celeriac build tasks/{example} failed"
    );
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Sign a component as `module`, granting `grants`; `reuse`: how many
/// tasks one instance may serve (the manifest's `"reuse"`, as `celeriac
/// sign --reuse N`), None for a fresh instance per task.
fn sign(
    bytes: &[u8],
    key: &KeyPair,
    module: &str,
    grants: &Grants,
    reuse: Option<u32>,
) -> anyhow::Result<SignatureFile> {
    let grants = Grants {
        reuse,
        ..grants.clone()
    };
    Ok(sign_component_with(
        bytes,
        key,
        module,
        &grants,
        SystemTime::now(),
    )?)
}

async fn run_all(
    env: &Env,
    workloads: &[Workload],
    quick: bool,
    wasm_dir: &Path,
    guests: &Guests,
) -> anyhow::Result<(Vec<Row>, Value)> {
    let broker = broker::connect(&env.redis, &env.celeriac_prefix).await?;
    let trust_dir = env.scratch.path().join("trust");
    std::fs::create_dir_all(&trust_dir)?;
    let (secret, public, _) = generate_keypair(&trust_dir.join("bench"))?;
    // The trust directory holds only the public key.
    let secret_path = env.scratch.path().join("bench.key");
    std::fs::rename(&secret, &secret_path)?;
    let key = KeyPair::load(&secret_path)?;
    let trust = TrustStore::from_keys([PublicKey::load(&public)?]);
    // Upload checks each component as a worker would load it.
    let checker = Sandbox::new(SandboxConfig {
        concurrency: 1,
        cache_dir: None,
        ..SandboxConfig::default()
    })?;
    let check = |b: &[u8]| checker.check(b);
    // Module, component, grants, and how many tasks an instance may serve
    // (the reuse variants' copies; None: a fresh instance per task).
    let none = Grants::default;
    let mut components = vec![
        ("math", wasm_dir.join("math.wasm"), none(), None),
        ("text", wasm_dir.join("text.wasm"), none(), None),
        ("py", guests.py.clone(), none(), None),
        ("py_reuse", guests.py.clone(), none(), Some(REUSE)),
    ];
    if let Some(js) = &guests.js {
        components.push(("js", js.clone(), none(), None));
        components.push(("js_reuse", js.clone(), none(), Some(REUSE)));
    }
    if env.server.is_some() {
        // The one component that reaches out: to the local server only.
        let grants = Grants {
            http: vec!["http://127.0.0.1:*".parse()?],
            ..Grants::default()
        };
        components.push(("web", wasm_dir.join("web.wasm"), grants, None));
    }
    for (module, path, grants, reuse) in components {
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let sig = sign(&bytes, &key, module, &grants, reuse)?;
        celeriac_broker::registry::upload(
            broker.as_ref(),
            &bytes,
            &sig,
            &trust,
            UploadOptions::new(&check),
        )
        .await?;
    }

    // Compile each component once into the shared on-disk cache, as a
    // deployment does once per digest and machine; the measured workers
    // then load compiled code instead of compiling (which would also leave
    // the compiler's freed heap in their RSS).
    eprintln!("compiling the components into the workers' cache…");
    {
        let io = env.server.is_some();
        let _compiler = celeriac_worker(env, &trust_dir, "compile", SLOTS, io, &[])?;
        let mut warm = vec![
            ("math.add", json!([1, 2])),
            ("text.sha256", json!(["x"])),
            ("py.fib", json!([1])),
        ];
        if guests.js.is_some() {
            warm.push(("js.word_count", json!([SENTENCE])));
        }
        if io {
            warm.push(("web.get", json!([env.server()?.url()])));
        }
        for (task, args) in warm {
            warm_up(broker.as_ref(), call(task, args)).await?;
        }
    }
    // A variant's flags may change the compiled code (fuel off does): each
    // distinct set warmed by a worker of its own.
    let mut warmed: Vec<Vec<String>> = Vec::new();
    for &w in workloads {
        for &v in w.variants() {
            let flags = v.worker_args(w.module(v));
            if v == Variant::Fresh || warmed.contains(&flags) {
                continue;
            }
            let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
            let name = format!("compile-{}-{}", w.name(), v.name());
            let _compiler = celeriac_worker(env, &trust_dir, &name, SLOTS, false, &extra)?;
            warm_up(broker.as_ref(), w.warm_call(v)).await?;
            warmed.push(flags);
        }
    }

    let redis_version = redis_info(&env.redis, "redis_version").await?;
    let mut versions = json!({ "redis": redis_version });
    let mut rows = Vec::new();
    for &w in workloads {
        let n = w.tasks(quick);
        let mut celery = Vec::new();
        for &pool in w.pools() {
            eprintln!(
                "{}: {} on {} {}…",
                w.name(),
                w.describe(n),
                pool.system(),
                pool.label()
            );
            let (run, celery_versions) = celery_run(env, w, pool, n)?;
            for k in ["celery", "python", "gevent", "requests", "bullmq", "node"] {
                if !celery_versions[k].is_null() {
                    versions[k] = celery_versions[k].clone();
                }
            }
            celery.push((pool, run));
        }
        let mut celeriac = Vec::new();
        for &v in w.variants() {
            eprintln!(
                "{}: on Celeriac --concurrency {} ({})…",
                w.name(),
                w.celeriac_slots(),
                v.label()
            );
            let run = celeriac_run(env, broker.as_ref(), &trust_dir, w, v, n).await?;
            celeriac.push((v, run));
        }
        for (pool, run) in &celery {
            for (v, c) in &celeriac {
                rows.extend(rows_for(env, w, n, *pool, run, *v, c).await?);
            }
        }
    }
    Ok((rows, versions))
}

async fn rows_for(
    env: &Env,
    w: Workload,
    n: usize,
    pool: Pool,
    celery: &Run,
    variant: Variant,
    celeriac: &Run,
) -> anyhow::Result<Vec<Row>> {
    // A workload run on several Celery pools says which one each row is,
    // and one run as several Celeriac variants which variant.
    let mut what = w.describe(n);
    if w.pools().len() > 1 {
        let _ = write!(what, "; Celery {}", pool.label());
    }
    if w.names_variant(variant) {
        let _ = write!(what, "; Celeriac {}", variant.label());
    }
    let row = |metric, unit, higher: bool, a: f64, b: f64, ceiling| Row {
        workload: w,
        what: what.clone(),
        metric,
        unit,
        higher_is_better: higher,
        celery: a,
        celeriac: b,
        advantage: if higher { b / a } else { a / b },
        ceiling,
        celery_mem: celery.mem,
        celeriac_mem: celeriac.mem,
        celery_pool: pool.label(),
        baseline: pool.system(),
        celeriac_concurrency: w.celeriac_slots().parse().unwrap_or(0),
        celeriac_variant: variant,
    };
    let rate = |r: &Run| n as f64 / r.elapsed.as_secs_f64();
    let key = format!("{}ceiling", env.celeriac_prefix);
    if matches!(
        w,
        Workload::Noop
            | Workload::Payload
            | Workload::Latency
            | Workload::CeleryProducer
            | Workload::PythonShort
            | Workload::JsShort
    ) {
        eprintln!("{}: Redis ceiling…", w.name());
    }
    Ok(match w {
        Workload::Noop
        | Workload::Payload
        | Workload::CeleryProducer
        | Workload::PythonShort
        | Workload::JsShort => {
            let size = if w == Workload::Payload {
                PAYLOAD_BYTES
            } else {
                256
            };
            let ceiling = ceiling_throughput(&env.redis, &key, n, size).await?;
            vec![row(
                "throughput",
                "tasks/s",
                true,
                rate(celery),
                rate(celeriac),
                Some(ceiling),
            )]
        }
        Workload::Latency => {
            let ceiling = Stats::of(ceiling_latency(&env.redis, &key, n).await?);
            let (a, b) = (
                Stats::of(celery.samples.clone()),
                Stats::of(celeriac.samples.clone()),
            );
            let s = |d: Duration| d.as_secs_f64();
            vec![
                row(
                    "latency p50",
                    "s",
                    false,
                    s(a.p50),
                    s(b.p50),
                    Some(s(ceiling.p50)),
                ),
                row(
                    "latency p99",
                    "s",
                    false,
                    s(a.p99),
                    s(b.p99),
                    Some(s(ceiling.p99)),
                ),
            ]
        }
        Workload::Chord => vec![row(
            "time per chord",
            "s",
            false,
            celery.elapsed.as_secs_f64(),
            celeriac.elapsed.as_secs_f64(),
            None,
        )],
        Workload::Cpu | Workload::SameCode => vec![row(
            "total time",
            "s",
            false,
            celery.elapsed.as_secs_f64(),
            celeriac.elapsed.as_secs_f64(),
            None,
        )],
        // No Redis ceiling: the server's 50 ms bounds each system at its
        // slots / 50 ms (Celery prefork 40, gevent 2,000, Celeriac 4,000).
        Workload::Io => vec![row(
            "throughput",
            "tasks/s",
            true,
            rate(celery),
            rate(celeriac),
            None,
        )],
    })
}

// ---------------------------------------------------------------------
// Celery: a prefork (or gevent) worker, and bench/celery/driver.py as the
// producer.

fn celery_run(env: &Env, w: Workload, pool: Pool, n: usize) -> anyhow::Result<(Run, Value)> {
    if pool == Pool::Bullmq {
        return bullmq_run(env, w, n);
    }
    // The same messages for either worker, queued before it starts.
    let preloaded = env.scratch.path().join("celery-ids.json");
    if w == Workload::CeleryProducer {
        preload(env, n, &preloaded)?;
    }
    let name = format!("celery-{}-{}.log", w.name(), pool.name());
    let log = std::fs::File::create(env.scratch.path().join(name))?;
    // `-P gevent`: Celery monkey-patches the process before loading the app.
    let worker = Command::new(&env.python)
        .args(["-m", "celery", "-A", "bench_app", "worker"])
        .args(["-P", pool.name(), "-c", pool.slots()])
        .args(["--without-gossip", "--without-mingle"])
        .args(["--without-heartbeat", "-l", "WARNING"])
        .current_dir(&env.celery_dir)
        .envs(celery_env(env))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start the Celery worker")?;
    let worker = Worker(worker);
    let watch = MemWatch::start(worker.0.id());
    let versions = match w {
        // Its warm-up would run behind the preloaded tasks.
        Workload::CeleryProducer => json!({}),
        _ => driver(env, &["warmup".into()])?,
    };
    let args: Vec<String> = match w {
        Workload::Noop | Workload::Latency => vec![w.name().into(), n.to_string()],
        Workload::CeleryProducer => vec!["drain".into(), path_arg(&preloaded)],
        Workload::Cpu | Workload::SameCode => vec!["cpu".into(), n.to_string(), FIB_N.to_string()],
        Workload::PythonShort => short_args(n),
        Workload::JsShort => unreachable!("BullMQ runs it, above"),
        Workload::Payload => vec!["payload".into(), n.to_string(), PAYLOAD_BYTES.to_string()],
        Workload::Io => vec!["io".into(), n.to_string(), env.server()?.url()],
        Workload::Chord => vec!["chord".into(), n.to_string(), CHORD_ROUNDS.to_string()],
    };
    let served = env.server.as_ref().map(DelayServer::served);
    let out = driver(env, &args)?;
    let mem = watch.stop();
    drop(worker);
    if w == Workload::Io {
        check_served(env, served, n, &format!("Celery {}", pool.label()))?;
    }
    let elapsed = Duration::from_secs_f64(out["elapsed_s"].as_f64().context("no elapsed_s")?);
    let samples = out["samples_us"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|us| Duration::from_secs_f64(us / 1e6))
                .collect()
        })
        .unwrap_or_default();
    Ok((
        Run {
            elapsed,
            samples,
            mem,
        },
        versions,
    ))
}

/// `short N TEXT WANT`: the short-task workloads' driver arguments.
fn short_args(n: usize) -> Vec<String> {
    vec![
        "short".into(),
        n.to_string(),
        SENTENCE.into(),
        SENTENCE_WORDS.to_string(),
    ]
}

/// BullMQ (js-short only): bench/bullmq's worker process, and its
/// driver.mjs as the producer, as driver.py is for Celery.
fn bullmq_run(env: &Env, w: Workload, n: usize) -> anyhow::Result<(Run, Value)> {
    ensure!(
        w == Workload::JsShort,
        "{} does not run on BullMQ",
        w.name()
    );
    let log = std::fs::File::create(env.scratch.path().join("bullmq-js-short.log"))?;
    let worker = Command::new("node")
        .arg("worker.mjs")
        .current_dir(&env.bullmq_dir)
        .envs(bullmq_env(env))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start the BullMQ worker (node)")?;
    let worker = Worker(worker);
    let watch = MemWatch::start(worker.0.id());
    let node = |args: &[String]| {
        let mut cmd = Command::new("node");
        cmd.arg("driver.mjs")
            .args(args)
            .current_dir(&env.bullmq_dir)
            .envs(bullmq_env(env));
        json_out(cmd, "bench/bullmq/driver.mjs", args)
    };
    let versions = node(&["warmup".into()])?;
    let out = node(&short_args(n))?;
    let mem = watch.stop();
    drop(worker);
    let elapsed = Duration::from_secs_f64(out["elapsed_s"].as_f64().context("no elapsed_s")?);
    let run = Run {
        elapsed,
        samples: Vec::new(),
        mem,
    };
    Ok((run, versions))
}

fn bullmq_env(env: &Env) -> [(&'static str, String); 3] {
    [
        ("BENCH_REDIS", env.redis.clone()),
        ("BENCH_PREFIX", env.bullmq_prefix.clone()),
        ("BENCH_QUEUE", "bench".into()),
    ]
}

fn celery_env(env: &Env) -> [(&'static str, String); 3] {
    [
        ("BENCH_REDIS", env.redis.clone()),
        ("BENCH_PREFIX", env.celery_prefix.clone()),
        ("BENCH_QUEUE", "bench".into()),
    ]
}

fn driver(env: &Env, args: &[String]) -> anyhow::Result<Value> {
    let mut cmd = Command::new(&env.python);
    cmd.arg("driver.py")
        .args(args)
        .current_dir(&env.celery_dir)
        .envs(celery_env(env));
    json_out(cmd, "bench/celery/driver.py", args)
}

/// Run a driver (its errors to our stderr) and read the JSON it prints.
fn json_out(mut cmd: Command, what: &str, args: &[String]) -> anyhow::Result<Value> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {what}"))?;
    ensure!(out.status.success(), "{what} {args:?} failed");
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what} printed no JSON"))
}

// ---------------------------------------------------------------------
// Celeriac: the real `celeriac worker` binary; this process produces.

async fn celeriac_run(
    env: &Env,
    broker: &dyn Broker,
    trust_dir: &Path,
    w: Workload,
    v: Variant,
    n: usize,
) -> anyhow::Result<Run> {
    if w == Workload::CeleryProducer {
        return celeriac_for_celery(env, trust_dir, n);
    }
    let module = w.module(v);
    let flags = v.worker_args(module);
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let name = if w.variants().len() > 1 {
        format!("{}-{}", w.name(), v.name())
    } else {
        w.name().to_string()
    };
    let worker = celeriac_worker(
        env,
        trust_dir,
        &name,
        w.celeriac_slots(),
        w == Workload::Io,
        &extra,
    )?;
    // Warm up with the workload's own component (loaded from the compile
    // cache), like a worker that has served it before.
    let warm = match w {
        Workload::CeleryProducer => unreachable!("run above"),
        Workload::SameCode | Workload::PythonShort | Workload::JsShort => w.warm_call(v),
        Workload::Cpu => call("math.fib", json!([1])),
        Workload::Payload => call("text.sha256", json!(["warm"])),
        Workload::Noop | Workload::Latency | Workload::Chord => call("math.add", json!([1, 2])),
        Workload::Io => call("web.get", json!([env.server()?.url()])),
    };
    warm_up(broker, warm).await?;
    let opts = SubmitOptions::default();

    let watch = MemWatch::start(worker.0.id());
    let served = env.server.as_ref().map(DelayServer::served);
    let mut samples = Vec::new();
    let elapsed = match w {
        Workload::Noop => {
            let reqs = (0..n).map(|i| call("math.add", json!([i, i]))).collect();
            bulk(broker, reqs, 1000, |i, v| v == &json!(2 * i)).await?
        }
        Workload::Latency => {
            let started = Instant::now();
            for i in 0..n {
                let t = Instant::now();
                let (_, r) = client::submit_and_wait(
                    broker,
                    call("math.add", json!([i, i])),
                    &opts,
                    Duration::from_secs(10),
                )
                .await?;
                samples.push(t.elapsed());
                ensure!(
                    r.is_some_and(|r| r.result == Some(json!(2 * i))),
                    "task {i} failed"
                );
            }
            started.elapsed()
        }
        Workload::Cpu | Workload::SameCode => {
            let task = if w == Workload::Cpu {
                "math.fib".to_string()
            } else {
                format!("{module}.fib")
            };
            let reqs = (0..n).map(|_| call(&task, json!([FIB_N]))).collect();
            bulk(broker, reqs, 1000, |_, v| v == &json!(FIB_27)).await?
        }
        Workload::PythonShort | Workload::JsShort => {
            let task = format!("{module}.word_count");
            let reqs = (0..n).map(|_| call(&task, json!([SENTENCE]))).collect();
            bulk(broker, reqs, 1000, |_, v| v == &json!(SENTENCE_WORDS)).await?
        }
        Workload::Payload => {
            let texts = payloads(n, PAYLOAD_BYTES);
            let want: Vec<Value> = texts
                .iter()
                .map(|t| json!(hex::encode(Sha256::digest(t.as_bytes()))))
                .collect();
            let reqs = texts
                .into_iter()
                .map(|t| call("text.sha256", json!([t])))
                .collect();
            bulk(broker, reqs, 100, |i, v| v == &want[i]).await?
        }
        Workload::Io => {
            let url = env.server()?.url();
            let reqs = (0..n).map(|_| call("web.get", json!([url]))).collect();
            bulk(broker, reqs, 1000, |_, v| v["status"] == 200).await?
        }
        Workload::CeleryProducer => unreachable!("run above"),
        Workload::Chord => {
            let mut total = Duration::ZERO;
            for _ in 0..CHORD_ROUNDS {
                let add =
                    |i: usize| Spec::task(TaskSpec::new("math.add").args([json!(i), json!(i)]));
                let spec = Spec::chord((0..n).map(add), Spec::task(TaskSpec::new("math.sum")));
                let t = Instant::now();
                let run = workflow::run(broker, &spec, &Defaults::default()).await?;
                let r = client::wait(broker, &run.final_id, Duration::from_secs(600)).await?;
                total += t.elapsed();
                let want = (n * (n - 1)) as f64;
                ensure!(
                    r.as_ref()
                        .and_then(|r| r.result.as_ref())
                        .and_then(Value::as_f64)
                        == Some(want),
                    "chord gave {r:?}, not {want}"
                );
            }
            total / CHORD_ROUNDS as u32
        }
    };
    let mem = watch.stop();
    drop(worker);
    if w == Workload::Io {
        check_served(env, served, n, "Celeriac")?;
    }
    Ok(Run {
        elapsed,
        samples,
        mem,
    })
}

/// Queue `n` tasks with Celery's producer (driver.py), no worker running.
fn preload(env: &Env, n: usize, ids: &Path) -> anyhow::Result<()> {
    driver(env, &["preload".into(), n.to_string(), path_arg(ids)])?;
    Ok(())
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The Celeriac worker on Celery's queue (`--celery-queue`, Celery's
/// `global_keyprefix`, Celery's name `add` mapped to `math.add`), draining
/// what Celery's producer (driver.py) queued, timed as the Celery worker is.
fn celeriac_for_celery(env: &Env, trust_dir: &Path, n: usize) -> anyhow::Result<Run> {
    let settings = env.scratch.path().join("celery.toml");
    std::fs::write(
        &settings,
        format!(
            "[celery]\nglobal_keyprefix = {:?}\n[celery.tasks]\n\"add\" = \"math.add\"\n",
            env.celery_prefix
        ),
    )?;
    let settings = settings.to_string_lossy().into_owned();
    let preloaded = env.scratch.path().join("celeriac-ids.json");
    preload(env, n, &preloaded)?;
    let worker = celeriac_worker(
        env,
        trust_dir,
        Workload::CeleryProducer.name(),
        SLOTS,
        false,
        &["--celery-queue", "bench", "--config", &settings],
    )?;
    let watch = MemWatch::start(worker.0.id());
    let out = driver(env, &["drain".into(), path_arg(&preloaded)])?;
    let mem = watch.stop();
    drop(worker);
    let elapsed = Duration::from_secs_f64(out["elapsed_s"].as_f64().context("no elapsed_s")?);
    Ok(Run {
        elapsed,
        samples: Vec::new(),
        mem,
    })
}

/// A `celeriac worker` with `concurrency` slots; `loopback` lets its
/// components reach 127.0.0.1 (the io server), which workers refuse by
/// default.
fn celeriac_worker(
    env: &Env,
    trust_dir: &Path,
    name: &str,
    concurrency: &str,
    loopback: bool,
    extra: &[&str],
) -> anyhow::Result<Worker> {
    let log = std::fs::File::create(env.scratch.path().join(format!("celeriac-{name}.log")))?;
    let mut cmd = Command::new(&env.celeriac_bin);
    cmd.arg("worker")
        .arg("--trust")
        .arg(trust_dir)
        .args(["--concurrency", concurrency, "--broker", &env.redis])
        .args(["--prefix", &env.celeriac_prefix]);
    if loopback {
        cmd.args(["--allow-private", "127.0.0.1"]);
    }
    cmd.args(extra);
    let worker = cmd
        .env("CELERIAC_CACHE_DIR", env.scratch.path().join("cache"))
        .env("CELERIAC_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start the Celeriac worker")?;
    Ok(Worker(worker))
}

async fn warm_up(broker: &dyn Broker, task: TaskRequest) -> anyhow::Result<()> {
    let id = client::submit(broker, task, &SubmitOptions::default()).await?;
    let r = client::wait(broker, &id, Duration::from_secs(180)).await?;
    ensure!(
        r.is_some_and(|r| r.state == TaskState::Success),
        "Celeriac warm-up failed (see the worker log)"
    );
    Ok(())
}

fn call(task: &str, args: Value) -> TaskRequest {
    TaskRequest {
        task: task.into(),
        args: args.as_array().cloned().unwrap_or_default(),
        kwargs: Default::default(),
    }
}

/// Submit in batches, wait until the queue is drained (the ack and the
/// result are one transaction), then check every result (untimed).
async fn bulk(
    broker: &dyn Broker,
    requests: Vec<TaskRequest>,
    batch: usize,
    check: impl Fn(usize, &Value) -> bool,
) -> anyhow::Result<Duration> {
    let opts = SubmitOptions::default();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(requests.len());
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let chunk: Vec<_> = requests.by_ref().take(batch).collect();
        ids.extend(client::submit_many(broker, chunk, &opts).await?);
    }
    wait_drained(broker, "default", Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    for (i, id) in ids.iter().enumerate() {
        let r = client::result(broker, id).await?;
        match r {
            Some(r)
                if r.state == TaskState::Success
                    && r.result.as_ref().is_some_and(|v| check(i, v)) => {}
            other => bail!("task {i} ({id}): {other:?}"),
        }
    }
    Ok(elapsed)
}

/// Distinct inputs (numbered), random letters so nothing compresses away;
/// the same shape driver.py sends Celery.
fn payloads(n: usize, size: usize) -> Vec<String> {
    let base: String = (0..size).map(|_| fastrand::alphanumeric()).collect();
    (0..n).map(|i| format!("{i:08}{}", &base[8..])).collect()
}

// ---------------------------------------------------------------------
// The Redis ceiling.

/// `n` messages of `size` bytes through one list: a producer pipelining
/// LPUSH, a consumer on its own connection taking RPOP batches.
async fn ceiling_throughput(url: &str, key: &str, n: usize, size: usize) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let mut producer = client.get_multiplexed_async_connection().await?;
    let mut consumer = client.get_multiplexed_async_connection().await?;
    let batch = (4 << 20) / size.max(1); // ~4 MiB per round trip
    let batch = batch.clamp(1, 1000);
    let msg = vec![b'x'; size];
    let started = Instant::now();
    let produce = async {
        let mut sent = 0;
        while sent < n {
            let k = batch.min(n - sent);
            let mut pipe = redis::pipe();
            for _ in 0..k {
                pipe.lpush(key, &msg).ignore();
            }
            let () = pipe.query_async(&mut producer).await?;
            sent += k;
        }
        anyhow::Ok(())
    };
    let consume = async {
        let mut got = 0;
        while got < n {
            let popped: Option<Vec<Vec<u8>>> = redis::cmd("RPOP")
                .arg(key)
                .arg(batch)
                .query_async(&mut consumer)
                .await?;
            match popped {
                Some(v) => got += v.len(),
                None => tokio::task::yield_now().await,
            }
        }
        anyhow::Ok(())
    };
    tokio::try_join!(produce, consume)?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The least a task round trip can cost through Redis: push a request,
/// another connection pops it (BLPOP) and pushes a reply, the first pops
/// the reply.
async fn ceiling_latency(url: &str, key: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let client = redis::Client::open(url)?;
    let (req, resp) = (format!("{key}:req"), format!("{key}:resp"));
    let mut echo_conn = client.get_multiplexed_async_connection().await?;
    let echo = {
        let (req, resp) = (req.clone(), resp.clone());
        tokio::spawn(async move {
            for _ in 0..n {
                let (_, v): (String, Vec<u8>) = redis::cmd("BLPOP")
                    .arg(&req)
                    .arg(10)
                    .query_async(&mut echo_conn)
                    .await?;
                let () = redis::cmd("LPUSH")
                    .arg(&resp)
                    .arg(v)
                    .query_async(&mut echo_conn)
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let () = redis::cmd("LPUSH")
            .arg(&req)
            .arg(format!("{{\"id\":{i}}}"))
            .query_async(&mut conn)
            .await?;
        let _: (String, Vec<u8>) = redis::cmd("BLPOP")
            .arg(&resp)
            .arg(10)
            .query_async(&mut conn)
            .await?;
        samples.push(t.elapsed());
    }
    echo.await??;
    Ok(samples)
}

async fn redis_info(url: &str, field: &str) -> anyhow::Result<String> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or("?")
        .trim()
        .to_string())
}

// ---------------------------------------------------------------------
// The io workload's HTTP server.

/// Every task of a run made its request: the server answered at least `n`
/// since `before` (more only if a task was redelivered).
fn check_served(env: &Env, before: Option<u64>, n: usize, who: &str) -> anyhow::Result<()> {
    let got = env.server()?.served() - before.unwrap_or(0);
    ensure!(
        got >= n as u64,
        "{who}: the io server answered {got} requests for {n} tasks"
    );
    if got > n as u64 {
        eprintln!("io: {who} made {got} requests for {n} tasks (redeliveries)");
    }
    Ok(())
}

// ---------------------------------------------------------------------
// Worker processes and their memory.

/// A worker process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let pid = self.0.id();
        let tree = process_tree(pid);
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left (a wedged worker, orphaned pool children).
        for p in tree {
            if Path::new(&format!("/proc/{p}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
        }
        let _ = self.0.wait();
    }
}

/// Peak memory of a process and its descendants: resets the kernel's
/// peak-RSS counters on start, samples PSS every 20 ms until stopped.
struct MemWatch {
    root: u32,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<u64>,
}

impl MemWatch {
    fn start(root: u32) -> Self {
        for p in process_tree(root) {
            // "5" resets VmHWM to the current RSS (Linux >= 4.0).
            let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // Sampling is not free: walking /proc and a process's page tables
        // every 20 ms put a 1.5 ms stall into every 50th Celeriac task of
        // the latency workload. Every 250 ms, tree refreshed every 2 s.
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            let mut tree = process_tree(root);
            for tick in 1u64.. {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let pss = tree
                    .iter()
                    .map(|p| proc_kib(&format!("/proc/{p}/smaps_rollup"), "Pss:"))
                    .sum();
                peak = peak.max(pss);
                std::thread::sleep(Duration::from_millis(250));
                if tick % 8 == 0 {
                    tree = process_tree(root);
                }
            }
            peak
        });
        Self {
            root,
            stop,
            sampler,
        }
    }

    fn stop(self) -> Mem {
        self.stop.store(true, Ordering::Relaxed);
        let pss_kib = self.sampler.join().unwrap_or(0);
        let rss_kib = process_tree(self.root)
            .into_iter()
            .map(|p| proc_kib(&format!("/proc/{p}/status"), "VmHWM:"))
            .sum();
        Mem { rss_kib, pss_kib }
    }
}

/// `pid` and all its descendants, from /proc/*/stat.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

fn proc_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------
// Output: the table, bench/results/, the chart, the README section.

fn value(unit: &str, v: f64) -> String {
    match unit {
        "tasks/s" => format!("{} tasks/s", thousands(v)),
        _ => fmt(Duration::from_secs_f64(v)),
    }
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(m: Mem) -> String {
    format!(
        "{:.0} MiB ({:.0})",
        m.rss_kib as f64 / 1024.0,
        m.pss_kib as f64 / 1024.0
    )
}

fn report(rows: &[Row], versions: &Value, redis: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workload | measure | Celery | Celeriac | Celeriac advantage | Redis ceiling | Celery peak RSS (PSS) | Celeriac peak RSS (PSS) |"
    );
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let _ = writeln!(
            s,
            "| `{}`: {} | {} | {} | {} | **{:.1}×** | {} | {} | {} |",
            r.workload.name(),
            r.what,
            r.metric,
            value(r.unit, r.celery),
            value(r.unit, r.celeriac),
            r.advantage,
            r.ceiling.map_or("—".into(), |c| value(r.unit, c)),
            mib(r.celery_mem),
            mib(r.celeriac_mem),
        );
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Celery named only where it ran (js-short alone is BullMQ's).
    let celery = if rows.iter().any(|r| r.baseline == "Celery") {
        format!(
            "Celery {} (Python {}, prefork -c 2) and ",
            versions["celery"].as_str().unwrap_or("?"),
            versions["python"].as_str().unwrap_or("?"),
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "\n{celery}Celeriac {} (--concurrency 2) on Redis {} at {}; {}, {} cores.",
        env!("CARGO_PKG_VERSION"),
        versions["redis"].as_str().unwrap_or("?"),
        broker::redact(redis),
        cpu,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if rows.iter().any(|r| r.workload == Workload::Io) {
        let _ = writeln!(
            s,
            "\n`io`: each task one GET to a local HTTP/1.1 server answering after {} ms; \
             Celery prefork -c {SLOTS}, or gevent -c {GEVENT_SLOTS} (gevent {}; requests {}, \
             one pooled session per process); Celeriac --concurrency {IO_SLOTS}.",
            IO_DELAY.as_millis(),
            versions["gevent"].as_str().unwrap_or("?"),
            versions["requests"].as_str().unwrap_or("?"),
        );
    }
    if rows.iter().any(|r| r.workload == Workload::JsShort) {
        let _ = writeln!(
            s,
            "\n`js-short`: the Celery columns are BullMQ {} (Node {}), one Worker process with \
             `concurrency: {SLOTS}`, results kept in Redis, jobs submitted with `addBulk` \
             (1,000 a call); the same word count (tasks/js-text/words.js) in Celeriac's js-text \
             component.",
            versions["bullmq"].as_str().unwrap_or("?"),
            versions["node"].as_str().unwrap_or("?"),
        );
    }
    if rows.iter().any(|r| r.celeriac_variant != Variant::Fresh) {
        let _ = writeln!(
            s,
            "\nCeleriac `reuse`: the component signed allowing an instance {REUSE} tasks \
             (`celeriac sign --reuse {REUSE}`), the worker run with `--reuse MODULE`; \
             `fuel off`: `--no-fuel MODULE` too. Every other row: a fresh instance per task, \
             fuel metered."
        );
    }
    s
}

fn write_results(root: &Path, env: &Env, rows: &[Row], table: &str) -> anyhow::Result<()> {
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let json_path = dir.join("latest.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(rows)?)?;
    let md = format!(
        "# Celeriac vs Celery\n\n\
         Measured by `bash bench/compare` (bench/src/bin/compare.rs), which rewrites this file.\n\n\
         {table}\n![Celeriac vs Celery](latest.png)\n\n\
         How to read it, and why `same-code` falls short: the README's Benchmarks section.\n"
    );
    std::fs::write(dir.join("latest.md"), md)?;
    let status = Command::new(&env.python)
        .arg(root.join("bench/celery/chart.py"))
        .arg(&json_path)
        .arg(dir.join("latest.png"))
        .status()?;
    ensure!(status.success(), "drawing the chart failed");

    // The README's section between the markers is this table.
    let readme_path = root.join("README.md");
    let readme = std::fs::read_to_string(&readme_path)?;
    let (begin, end) = ("<!-- compare:begin -->", "<!-- compare:end -->");
    if let (Some(a), Some(b)) = (readme.find(begin), readme.find(end)) {
        let updated = format!(
            "{}{begin}\n{table}\n![Celeriac vs Celery](bench/results/latest.png)\n{}",
            &readme[..a],
            &readme[b..]
        );
        std::fs::write(&readme_path, updated)?;
    }
    eprintln!("wrote bench/results/latest.{{md,json,png}} and the README's table");
    Ok(())
}
