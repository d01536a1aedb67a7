//! Prometheus metrics, recorded through the `metrics` facade (a no-op until
//! an exporter is installed).

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};

use celeriac_broker::QueueStats;

/// The metrics endpoint could not be set up (address in use, or an
/// exporter already installed).
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics: {0}")]
pub struct MetricsError(#[from] metrics_exporter_prometheus::BuildError);

/// Serve `/metrics` on `addr`. Call inside a tokio runtime.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), MetricsError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("celeriac_task_runtime_seconds".into()),
            &[
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                5.0, 30.0,
            ],
        )?
        .install()?;
    Ok(())
}

pub(super) fn task_finished(task: &str, state: &'static str) {
    counter!("celeriac_tasks_total", "task" => task.to_string(), "state" => state).increment(1);
}

pub(super) fn task_ran(task: &str, runtime: Duration, fuel: Option<u64>) {
    histogram!("celeriac_task_runtime_seconds", "task" => task.to_string())
        .record(runtime.as_secs_f64());
    if let Some(f) = fuel {
        counter!("celeriac_task_fuel_total", "task" => task.to_string()).increment(f);
    }
}

/// A completion Redis refused for good, replaced by a FAILURE.
pub(super) fn store_refused() {
    counter!("celeriac_results_refused_total").increment(1);
}

pub(super) fn leases_lost(n: usize) {
    counter!("celeriac_leases_lost_total").increment(n as u64);
}

/// 0 while the worker stands down (it cannot store results).
pub(super) fn healthy(ok: bool) {
    gauge!("celeriac_worker_healthy").set(if ok { 1.0 } else { 0.0 });
}

pub(super) fn slots_busy(n: u32) {
    gauge!("celeriac_worker_slots_busy").set(n as f64);
}

pub(super) fn queue_depth(queue: &str, s: &QueueStats) {
    let q = queue.to_string();
    gauge!("celeriac_queue_ready", "queue" => q.clone()).set(s.ready as f64);
    gauge!("celeriac_queue_delayed", "queue" => q.clone()).set(s.delayed as f64);
    gauge!("celeriac_queue_in_flight", "queue" => q.clone()).set(s.in_flight as f64);
    gauge!("celeriac_queue_dead", "queue" => q).set(s.dead as f64);
}
