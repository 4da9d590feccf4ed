//! `--devices` entries: a device of the chosen backend by index, `default`, or a device served
//! by another process or machine (`cargo xtask serve-device`) through Burn's remote backend.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;

use crate::{Backend, BackendError, probe};

/// One entry of `--devices`: a device of the chosen backend by index, or a device served by
/// another process or machine (`cargo xtask serve-device`) through Burn's remote backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The backend's device with this index: the GPU's index for `cuda`, the discrete GPU's
    /// index for `wgpu` and `vulkan`; the CPU backends have one device, `0`, which may be
    /// listed more than once to run several workers on it.
    Local(usize),
    /// `wgpu`/`vulkan`'s default adapter (a discrete GPU first, else whatever the driver
    /// offers, such as Mesa's software lavapipe).
    Default,
    /// A remote server's device: `ws://host:port` (its device 0) or `ws://host:port/N`.
    Remote {
        /// The server's WebSocket URL, without the device index.
        url: String,
        /// Which of the server's devices.
        index: usize,
    },
}

impl DeviceSpec {
    /// Parses a comma-separated `--devices` list, such as `0,1`, `0,0` or
    /// `0,ws://10.0.0.2:3000`.
    pub fn parse_list(list: &str) -> Result<Vec<DeviceSpec>, String> {
        let specs: Vec<DeviceSpec> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if specs.is_empty() {
            return Err(format!(
                "--devices {list:?} names no device: give indices such as 0,1 or addresses such as ws://127.0.0.1:3000"
            ));
        }
        Ok(specs)
    }

    /// Opens the device (connecting to a remote one) and runs the same probe as
    /// [`Backend::check`] on it. `backend` is the backend of local entries; a remote device
    /// runs whatever backend its server was started with.
    pub fn open(&self, backend: Backend) -> Result<Device, BackendError> {
        match self {
            DeviceSpec::Remote { url, index } => {
                let host = burn::tensor::remote::RemoteHost::websocket(url);
                let device = Device::remote_options(&host)
                    .device_index(*index)
                    .init()
                    .map_err(|error| BackendError::Remote {
                        device: self.to_string(),
                        reason: error.to_string(),
                    })?;
                probe(&device).map_err(|reason| BackendError::Remote {
                    device: self.to_string(),
                    reason,
                })?;
                Ok(device)
            }
            DeviceSpec::Default => {
                if !matches!(backend, Backend::Wgpu | Backend::Vulkan) {
                    return Err(BackendError::NoSuchDevice {
                        backend,
                        device: self.to_string(),
                        reason: "`default` names the default adapter of wgpu and vulkan".into(),
                    });
                }
                backend.check()
            }
            DeviceSpec::Local(index) => {
                let device = match backend {
                    Backend::Flex | Backend::Ndarray if *index != 0 => {
                        return Err(BackendError::NoSuchDevice {
                            backend,
                            device: self.to_string(),
                            reason: "the CPU backends have one device, 0; list it more than once (--devices 0,0) to run several workers on it".into(),
                        });
                    }
                    Backend::Flex | Backend::Ndarray => return backend.check(),
                    Backend::Wgpu => Device::wgpu(DeviceKind::DiscreteGpu(*index)),
                    #[cfg(feature = "vulkan")]
                    Backend::Vulkan => Device::vulkan(DeviceKind::DiscreteGpu(*index)),
                    #[cfg(feature = "cuda")]
                    Backend::Cuda => Device::cuda(*index),
                    // Not built: `check` says how to build them.
                    #[allow(unreachable_patterns)]
                    _ => return backend.check(),
                };
                // The backend's own check first: with no driver at all, its error says what
                // to install.
                backend.check()?;
                probe(&device).map_err(|reason| BackendError::NoSuchDevice {
                    backend,
                    device: self.to_string(),
                    reason,
                })?;
                Ok(device)
            }
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("ws://") {
            let (authority, index) = match rest.split_once('/') {
                None | Some((_, "")) => (rest.trim_end_matches('/'), 0),
                Some((authority, index)) => (
                    authority,
                    index.parse::<usize>().map_err(|_| {
                        format!("in --devices, {s:?}: the part after the address must be a device index, as in ws://host:3000/1")
                    })?,
                ),
            };
            let port_ok = authority
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!(
                    "in --devices, {s:?} is not a remote device address: write ws://host:port, as printed by cargo xtask serve-device"
                ));
            }
            return Ok(DeviceSpec::Remote {
                url: format!("ws://{authority}"),
                index,
            });
        }
        if s.eq_ignore_ascii_case("default") {
            return Ok(DeviceSpec::Default);
        }
        s.parse::<usize>().map(DeviceSpec::Local).map_err(|_| {
            format!(
                "in --devices, {s:?} is neither a device index (0, 1, …), `default`, nor a remote address (ws://host:port)"
            )
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Local(index) => write!(f, "{index}"),
            DeviceSpec::Default => f.write_str("default"),
            DeviceSpec::Remote { url, index: 0 } => f.write_str(url),
            DeviceSpec::Remote { url, index } => write!(f, "{url}/{index}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse_print_back_and_name_what_is_wrong() {
        let specs =
            DeviceSpec::parse_list("0, 1,default,ws://10.0.0.2:3000,ws://gpu:3001/2").unwrap();
        assert_eq!(
            specs,
            vec![
                DeviceSpec::Local(0),
                DeviceSpec::Local(1),
                DeviceSpec::Default,
                DeviceSpec::Remote {
                    url: "ws://10.0.0.2:3000".into(),
                    index: 0
                },
                DeviceSpec::Remote {
                    url: "ws://gpu:3001".into(),
                    index: 2
                },
            ]
        );
        let printed: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            printed,
            ["0", "1", "default", "ws://10.0.0.2:3000", "ws://gpu:3001/2"]
        );
        for (bad, says) in [
            ("", "names no device"),
            ("gpu", "neither a device index"),
            ("-1", "neither a device index"),
            ("ws://host", "not a remote device address"),
            ("ws://:3000", "not a remote device address"),
            ("ws://host:99999", "not a remote device address"),
            ("ws://host:3000/x", "must be a device index"),
        ] {
            let err = DeviceSpec::parse_list(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let cpu = DeviceSpec::Local(1)
            .open(Backend::Flex)
            .unwrap_err()
            .to_string();
        assert!(cpu.contains("--devices 0,0"), "{cpu}");
        let default = DeviceSpec::Default
            .open(Backend::Flex)
            .unwrap_err()
            .to_string();
        assert!(default.contains("default adapter of wgpu"), "{default}");
        DeviceSpec::Local(0).open(Backend::Ndarray).unwrap();
    }
}
