//! Host-side bindings of the `celeriac:task` world (see `wit/`).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "celeriac:task/task",
    // Key-value calls wait on the store (Redis): they must not block a thread.
    imports: { "celeriac:task/kv": async },
    exports: { default: async },
});
