//! Models (burn): architectures, their weight loaders, and the encoders served from the
//! `models` table. Knows nothing of Lance or gRPC: the model service hands it tensors.
pub mod bert;
pub mod encoder;
pub mod weights;

/// The backend models run on. burn's `flex` CPU backend (threads + SIMD with burn's default
/// features); the model code is generic over `burn::tensor::backend::Backend`, so a CUDA
/// backend only changes this alias and [`Device`].
pub type ModelBackend = burn::backend::Flex;

/// Where models run, from `--device cpu|cuda:N|auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
    Auto,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!("unknown device '{s}': use cpu, cuda:N or auto")),
            },
        }
    }
}

/// The device models run on for the requested `--device`. This build carries burn's CPU
/// backend only, so anything but `cpu` says once in the log that models stay on the CPU
/// (exact search, which has its own CUDA backend, follows `--device` separately).
pub fn resolve_device(requested: Device) -> Result<burn::tensor::Device<ModelBackend>, String> {
    if requested != Device::Cpu {
        tracing::info!(?requested, "models run on the CPU (burn flex backend): this build has no burn GPU backend");
    }
    Ok(Default::default())
}
