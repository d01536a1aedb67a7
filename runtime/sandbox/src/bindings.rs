//! Host-side bindings of the `celeriac:task` world (see `wit/`).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "celeriac:task/task",
    exports: { default: async },
});
