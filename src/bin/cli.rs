//! `qwen-layered`: the native command-line program, sharing the library with the browser app.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    native::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::process::ExitCode;

    use burn::tensor::Device;
    use qwen_layered_web::gpu::{GpuReport, matmul_self_test};

    const USAGE: &str = "usage: qwen-layered <command>

commands:
  gpu    acquire the native wgpu device Burn uses, print its adapter, limits and features,
         and check a 256x256x256 matmul on it against the CPU backend
  help   print this text";

    pub fn main() -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match args.first().map(String::as_str) {
            Some("gpu") => gpu(),
            Some("help" | "--help" | "-h") | None => {
                println!("{USAGE}");
                ExitCode::SUCCESS
            }
            Some(other) => {
                eprintln!("unknown command {other:?}\n\n{USAGE}");
                ExitCode::from(2)
            }
        }
    }

    fn gpu() -> ExitCode {
        let (device, setup) = match Device::wgpu_options().init_with_setup() {
            Ok(pair) => pair,
            Err(err) => {
                eprintln!(
                    "no native GPU adapter: {err}\n(on Linux without a GPU, install Mesa's \
                     software Vulkan driver: apt-get install mesa-vulkan-drivers)"
                );
                return ExitCode::FAILURE;
            }
        };
        let report = GpuReport::from_native(&setup.adapter, &setup.device);
        for line in report.lines() {
            println!("{line}");
        }
        let start = std::time::Instant::now();
        match pollster::block_on(matmul_self_test(&device, 256, 256, 256, 42)) {
            Ok(check) => {
                println!(
                    "matmul 256x256x256 on GPU vs CPU: max abs error {:e} ({} ms incl. shader compile)",
                    check.max_abs_err,
                    start.elapsed().as_millis()
                );
                if check.max_abs_err <= 1e-3 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::FAILURE
            }
        }
    }
}
