//! `cargo xtask serve-device`: serves this machine's devices to other qkv processes through
//! Burn's remote backend (`burn::server::RemoteServer` over WebSocket), so that
//! `cargo xtask train --devices ws://host:port` can train on them from another process or
//! machine.

use anyhow::{Context, Result, bail};
use burn::server::{RemoteServer, WebSocketTransport};
use clap::Args;
use qkv_backends::{Backend, DeviceSpec};

/// Options of `cargo xtask serve-device`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The backend whose devices are served: flex, ndarray, wgpu, vulkan or cuda.
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// Which of the backend's devices to serve, as in `train --devices` (a client picks one
    /// by its position in this list: `ws://host:port/1` is the second).
    #[arg(long, default_value = "0")]
    devices: String,
    /// TCP port to listen on, on every IPv4 interface; 0 lets the system pick one (printed).
    #[arg(long, default_value_t = 3000)]
    port: u16,
}

/// Runs `cargo xtask serve-device` until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    let specs = DeviceSpec::parse_list(&args.devices).map_err(anyhow::Error::msg)?;
    if let Some(remote) = specs
        .iter()
        .find(|s| matches!(s, DeviceSpec::Remote { .. }))
    {
        bail!("serve-device serves this machine's devices; {remote} is a remote one");
    }
    let devices = specs
        .iter()
        .map(|spec| spec.open(args.backend))
        .collect::<Result<Vec<_>, _>>()?;
    let listener = std::net::TcpListener::bind(("0.0.0.0", args.port))
        .with_context(|| format!("listening on port {}: choose another --port", args.port))?;
    let port = listener
        .local_addr()
        .context("reading the listening address")?
        .port();
    println!(
        "serving {} {} device(s) ({}) on port {port}: train with --devices ws://<this machine>:{port}; Ctrl-C stops",
        devices.len(),
        args.backend,
        args.devices
    );
    RemoteServer::new(devices)
        .serve(WebSocketTransport::from_listener(listener))
        .map_err(|error| anyhow::anyhow!("the device server stopped: {error}"))
}
