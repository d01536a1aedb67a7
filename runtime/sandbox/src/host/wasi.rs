//! The WASI context: linked only because guest toolchains import it, it
//! grants nothing (no preopened directories, environment, arguments,
//! sockets or name lookups; stdin closed) but randomness, metered as host
//! work, and stdout / stderr into capped pipes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::HostState;
use super::output::CappedPipe;

/// A context for one task, writing to its pipes and counting random bytes
/// into `host_work`.
pub(crate) fn context(
    stdout: &CappedPipe,
    stderr: &CappedPipe,
    host_work: &Arc<AtomicU64>,
) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .secure_random(MeteredRng::new(host_work.clone()))
        .insecure_random(MeteredRng::new(host_work.clone()))
        .build()
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The WASI random generators, counting what they hand out into the task's
/// host work. wasmtime-wasi draws one `u32` per byte of `get-random-bytes`,
/// so each draw counts as the one byte it becomes.
struct MeteredRng {
    inner: Box<dyn wasmtime_wasi::Rng + Send>,
    host_work: Arc<AtomicU64>,
}

impl MeteredRng {
    fn new(host_work: Arc<AtomicU64>) -> Self {
        Self {
            inner: wasmtime_wasi::thread_rng(),
            host_work,
        }
    }

    fn count(&self, bytes: usize) {
        self.host_work.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl rand_core::TryRng for MeteredRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.count(1);
        Ok(self.inner.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.count(8);
        Ok(self.inner.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.count(dst.len());
        self.inner.fill_bytes(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_count_as_host_work() {
        use rand_core::Rng;
        let work = Arc::new(AtomicU64::new(0));
        let mut rng = MeteredRng::new(work.clone());
        let mut buf = [0u8; 100];
        rng.fill_bytes(&mut buf);
        rng.next_u64();
        rng.next_u32();
        assert_eq!(work.load(Ordering::Relaxed), 109);
    }
}
