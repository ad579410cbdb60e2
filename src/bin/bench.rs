//! `qwen-layered-bench`: native benchmarks of the model code at the real sizes (see
//! BENCHMARKS.md): GEMM through `model::nn::Linear`, full-size transformer blocks with random
//! weights, the f32/8-bit/4-bit block agreement, and weight-loading throughput.
//!
//! Build with `cargo build --profile native --bin qwen-layered-bench`; a debug build measures
//! unoptimised code.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    native::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::io::{Read, Write};
    use std::path::Path;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use burn::tensor::{Device, Tensor, TensorData};
    use qwen_layered_web::bench::{
        self, BlockInputs, BlockShape, DIM, FF, HEADS, LAYERS, block_flops, blocks_source,
        forward_flops, load_blocks,
    };
    use qwen_layered_web::cli_args::{self, Fail, Options};
    use qwen_layered_web::gpu::{GpuReport, seeded_values};
    use qwen_layered_web::kernels::qmatmul::{self, Tile};
    use qwen_layered_web::model::nn::{
        BlockWeight, Linear, QuantWeight, QuantizedMatmul, quantized_matmul, set_quantized_matmul,
    };
    use qwen_layered_web::model::transformer::{BlockLimits, QwenImageTransformerBlock};
    use qwen_layered_web::weights::{
        Checkpoint, DEFAULT_READ_CHUNK, DirSource, GgufFile, Precision, QuantizedLayout,
        QuantizedMatrix, SafetensorsFolder, WeightSource, write_quantized,
    };

    const USAGE: &str = "usage: qwen-layered-bench <command> [options]

commands:
  gemm       GFLOP/s of model::nn::Linear::forward ([M, K] x [K, N] + bias), f32 and 8-/4-bit
             weights; median of --iters runs after one warm-up, each ended by a read-back
             [--device cpu|wgpu (cpu)] [--shapes MxKxN,... (the real ones, below)]
             [--m M (override every M)] [--bits 0,8,4 (these three)] [--iters N (3)]
             --bits also takes burn8,burn4: Burn's own quantized tensors (quantize_dynamic,
             blocks of 32 along N, f32 scales) in a plain matmul; and q8t64,q4t64,q8t128,
             q4t128: our WGSL kernel in a forced tiling (8 and 4 are model::nn::Linear, on
             wgpu in the default QuantizedMatmul of each: fused at 8 bits, dequantized at 4);
             8fused,4fused,8deq,4deq: Linear in that QuantizedMatmul (fused: Burn's quantized
             matmul on our blocks; deq: dequantized to f32 per call, then Burn's f32 matmul);
             8f16,4f16: Linear dequantized per call with f16 operands (model::nn::f16_linear:
             rows scaled into [-1, 1], Burn's f16 matmul; shader-f16);
             f16: the f32 operands cast to f16 (shader-f16), Burn's matmul in f16
             real shapes at 640², 4 layers: image side M = 9600, text side M = 300,
             K = 3072 (N = 3072, 12288, 18432) and the MLP out projection K = 12288, N = 3072
  dequantize time turning 8-/4-bit weights into the f32 matrix the dequantized matmul reads
             (QuantizedMatmul::Dequantize's temporary), GB/s of codes read + f32 written
             [--device cpu|wgpu (cpu)] [--shapes RxC,... (3072x3072,6144x3072,1536x12288:
             the real weights' parts as Linear holds them, d_out x d_in)] [--bits 8,4]
             [--way burn,ops (both): burn: Burn's dequantize of the model's quantized tensor;
             ops: the plain-Burn twin on the packed words (BlockWeight::dequantize)]
             [--iters N (3)]
  block      time one or more full-size transformer blocks (random weights, no download) and
             extrapolate to 60 blocks and 100 forwards; peak device memory where the backend
             reports it
             [--device cpu|wgpu (cpu)] [--bits 0|8|4 (4)] [--blocks B (1)] [--iters N (1)]
             [--apply A (B): blocks applied per forward, cycling over the B loaded ones]
             [--resolution R (640)] [--layers N (4)] [--txt T (300)]
             [--tokens S (a short image sequence of S tokens instead of R², N layers)]
             [--qmatmul fused|deq|f16 (the default of --bits): how quantized weights multiply
             (f16: dequantized, f16 operands; shader-f16)]
             [--scores-mib M (1024): the attention in runs of query rows holding at most M MiB
             of scores, as the memory plan sets it; 0: the flash kernel]
             [--profile: after the timed forwards, one block with the device awaited after
             each stage (model::profile marks), time per stage]
  attention  the joint attention at the real size: the WGSL flash kernel against Burn's own
             attention and the plain-Burn twin (which stores the [S, S] scores), GFLOP/s of
             4·S²·128 per head; skips the twin where its scores would pass --max-scores-gib
             [--device cpu|wgpu (cpu)] [--tokens S (9900: 9600 image + 300 text)]
             [--heads H (24)] [--iters N (3)]
             [--which flash,burn,twin,chunked (all; flash16: the kernel at 16 keys per
             tile instead of 8, where the device grants 24 KiB of workgroup memory)]
             [--max-scores-gib G (4: many GPUs cap one buffer near there)]
             chunked: kernels::attention::chunked_attention, Burn's matmul + softmax over runs
             of query rows whose scores fit [--chunk-mib M (1024)]
  cosine     one full-size block in f32, 8-bit and 4-bit on the same inputs: cosine similarity
             of the outputs (and of the updates, output - input); fails under 0.999 / 0.99
             [--device cpu|wgpu (cpu)] [--resolution R (640)] [--layers N (4)] [--txt T (300)]
             [--tokens S]
  make-file  PATH [--blocks B (2)] [--seed K (1)]: write a random BF16 safetensors file of B
             full-size blocks (680 MB each)
  load       PATH [--precision f32|q8|q4 (f32)] [--cache warm|cold|both (both)]: load every
             tensor of a safetensors file through the loader onto the CPU device and compare
             with a raw sequential read of the same file in the loader's read steps (8 MiB into
             one reused buffer); warm: the file in the page cache (read once first), cold:
             evicted from it (posix_fadvise DONTNEED) before each timed run
             [--stored]: first write its stored quantized copy (PATH.stored-q4_0.gguf, every
             tensor, the linear weights quantized, as the page keeps after a first load;
             timed), then load from it against a raw read of the copy
  help       print this text";

    fn usage_error(msg: impl Into<String>) -> Fail {
        cli_args::usage_error(USAGE, msg)
    }

    pub fn main() -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let rest = args.get(1..).unwrap_or_default();
        let result = match args.first().map(String::as_str) {
            Some("gemm") => gemm(rest),
            Some("dequantize") => dequantize(rest),
            Some("block") => block(rest),
            Some("attention") => attention(rest),
            Some("cosine") => cosine(rest),
            Some("make-file") => make_file(rest),
            Some("load") => load(rest),
            Some("help" | "--help" | "-h") | None => {
                println!("{USAGE}");
                Ok(())
            }
            Some(other) => Err(usage_error(format!("unknown command {other:?}"))),
        };
        cli_args::exit_code(result)
    }

    /// `--device cpu|wgpu`: the device and a line saying what it is.
    fn device(opts: &Options) -> Result<(Device, String), Fail> {
        match opts.get("--device").unwrap_or("cpu") {
            "cpu" => Ok((
                Device::flex(),
                format!(
                    "Burn Flex (CPU), {} threads",
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                ),
            )),
            "wgpu" => {
                let (device, setup) = Device::wgpu_options()
                    .init_with_setup()
                    .map_err(|e| Fail(format!("no native GPU adapter: {e}"), 1))?;
                let report = GpuReport::from_native(&setup.adapter, &setup.device);
                let line = report.lines().into_iter().next().unwrap_or_default();
                Ok((device, format!("wgpu: {line}")))
            }
            other => Err(usage_error(format!("--device {other:?}: use cpu or wgpu"))),
        }
    }

    fn precision_of_bits(bits: &str) -> Result<Precision, Fail> {
        match bits {
            "0" | "32" | "f32" => Ok(Precision::F32),
            "8" => Ok(Precision::Q8),
            "4" => Ok(Precision::Q4),
            other => Err(usage_error(format!(
                "--bits {other:?}: use 0 (f32), 8 or 4"
            ))),
        }
    }

    fn name(p: Precision) -> &'static str {
        match p {
            Precision::F32 => "f32",
            Precision::Q8 => "q8",
            Precision::Q4 => "q4",
        }
    }

    /// Waits for the device: `sync`, then a one-value read-back of `t` (which depends on all of
    /// the work that made it).
    fn flush<const D: usize>(device: &Device, t: Tensor<D>) -> Result<(), Fail> {
        device
            .sync()
            .map_err(|e| Fail(format!("device sync: {e:?}"), 1))?;
        let mut one = t;
        for d in 0..D {
            one = one.narrow(d, 0, 1);
        }
        one.try_into_data()
            .map_err(|e| Fail(format!("reading the result back: {e}"), 1))?;
        Ok(())
    }

    fn median(mut times: Vec<Duration>) -> Duration {
        times.sort();
        times[times.len() / 2]
    }

    fn memory_line(device: &Device) -> String {
        match device.memory_pool_usage() {
            Some(u) => format!(
                "{:.2} GiB in use, {:.2} GiB reserved by the pool ({} allocations)",
                gib(u.bytes_in_use),
                gib(u.bytes_reserved),
                u.number_allocs
            ),
            None => "not reported by this backend".into(),
        }
    }

    fn gib(bytes: u64) -> f64 {
        bytes as f64 / (1u64 << 30) as f64
    }

    const REAL_SHAPES: &str = "9600x3072x3072,9600x3072x12288,9600x3072x18432,9600x12288x3072,300x3072x3072,300x3072x12288";

    /// One weight layout `gemm` measures: the model's own `Linear` (f32, or 8-/4-bit blocks,
    /// on wgpu through Burn's quantized matmul), our WGSL kernel in a forced tiling
    /// (`q8t64` .. `q4t128`), or Burn's own quantization of the matrix (`burn8`/`burn4`:
    /// `quantize_dynamic`, blocks of 32 along N) in a plain `matmul`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum GemmWeights {
        Model(Precision),
        /// `Linear` with its weight of `bits` multiplied this way.
        ModelWith(u32, QuantizedMatmul),
        Tiled(u32, Tile),
        Burn(u8),
        F16,
    }

    impl GemmWeights {
        fn parse(s: &str) -> Result<Self, Fail> {
            match s {
                "burn8" => Ok(Self::Burn(8)),
                "burn4" => Ok(Self::Burn(4)),
                "q8t64" => Ok(Self::Tiled(8, Tile::Square64)),
                "q4t64" => Ok(Self::Tiled(4, Tile::Square64)),
                "q8t128" => Ok(Self::Tiled(8, Tile::Wide128)),
                "q4t128" => Ok(Self::Tiled(4, Tile::Wide128)),
                "8fused" => Ok(Self::ModelWith(8, QuantizedMatmul::Fused)),
                "4fused" => Ok(Self::ModelWith(4, QuantizedMatmul::Fused)),
                "8deq" => Ok(Self::ModelWith(8, QuantizedMatmul::Dequantize)),
                "4deq" => Ok(Self::ModelWith(4, QuantizedMatmul::Dequantize)),
                "8f16" => Ok(Self::ModelWith(8, QuantizedMatmul::DequantizeF16)),
                "4f16" => Ok(Self::ModelWith(4, QuantizedMatmul::DequantizeF16)),
                "f16" => Ok(Self::F16),
                other => precision_of_bits(other).map(Self::Model),
            }
        }

        fn label(self) -> String {
            match self {
                Self::Model(p) => name(p).into(),
                Self::ModelWith(bits, QuantizedMatmul::Fused) => format!("{bits}fused"),
                Self::ModelWith(bits, QuantizedMatmul::Dequantize) => format!("{bits}deq"),
                Self::ModelWith(bits, QuantizedMatmul::DequantizeF16) => format!("{bits}f16"),
                Self::F16 => "f16".into(),
                Self::Tiled(bits, tile) => format!("q{bits}t{}", tile.size()),
                Self::Burn(bits) => format!("burn{bits}"),
            }
        }
    }

    /// Burn's block quantization of `w_t` (`[K, N]`), in the scheme of our blocks
    /// (`QuantWeight::scheme`) but computed by Burn, so its blocks run along N.
    fn burn_quantized(w_t: Tensor<2>, bits: u8) -> Tensor<2> {
        w_t.quantize_dynamic(&QuantWeight::scheme(bits as u32))
    }

    /// The end of a command that measured several cases and printed each: an error when
    /// `failed` of them failed.
    fn none_failed(failed: usize) -> Result<(), Fail> {
        match failed {
            0 => Ok(()),
            n => Err(Fail(format!("{n} case(s) failed (above)"), 1)),
        }
    }

    /// Runs `f`, turning a panic (an unsupported kernel, a buffer over the device's limit) into
    /// an error, so that one failing case does not end a benchmark run.
    fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, Fail>) -> Result<T, Fail> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(no message)".into());
                Err(Fail(format!("{what}: panicked: {msg}"), 1))
            }
        }
    }

    /// Median time of `iters` runs of `f` after one warm-up, each ended by `flush`, and the
    /// last run's output.
    fn time_runs<const D: usize>(
        device: &Device,
        iters: usize,
        mut f: impl FnMut() -> Tensor<D>,
    ) -> Result<(Duration, Tensor<D>), Fail> {
        let mut times = Vec::with_capacity(iters);
        let mut last = None;
        for i in 0..=iters {
            let start = Instant::now();
            let out = f();
            flush(device, out.clone())?;
            if i > 0 {
                times.push(start.elapsed());
            }
            last = Some(out);
        }
        Ok((median(times), last.expect("at least one run")))
    }

    /// `‖a − b‖ / ‖b‖` over all values, read back as one number.
    fn relative_error<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Result<f64, Fail> {
        let num = (a - b.clone()).powi_scalar(2).sum();
        let den = b.powi_scalar(2).sum();
        let read = |t: Tensor<1>| -> Result<f64, Fail> {
            let v = t
                .try_into_data()
                .map_err(|e| Fail(format!("reading the error back: {e}"), 1))?
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| Fail(format!("reading the error back: {e:?}"), 1))?;
            Ok(v[0] as f64)
        };
        Ok((read(num)? / read(den)?).sqrt())
    }

    fn gemm(args: &[String]) -> Result<(), Fail> {
        let opts = Options::parse(
            args,
            &["--device", "--shapes", "--m", "--bits", "--iters"],
            &[],
            1,
            USAGE,
        )?;
        let (device, what) = device(&opts)?;
        let iters = opts.number("--iters", 3)?.max(1);
        let m_override = opts.get("--m").map(|_| opts.number("--m", 0)).transpose()?;
        let layouts = opts
            .get("--bits")
            .unwrap_or("0,8,4")
            .split(',')
            .map(GemmWeights::parse)
            .collect::<Result<Vec<_>, _>>()?;
        println!("device: {what}");
        println!("shape (MxKxN)        weights  median ms   GFLOP/s  rel. error vs f32 (L2)");
        let mut failed = 0;
        for spec in opts.get("--shapes").unwrap_or(REAL_SHAPES).split(',') {
            let dims: Vec<usize> = spec
                .split('x')
                .map(|v| v.parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| usage_error(format!("shape {spec:?}: expected MxKxN")))?;
            let [m, k, n] = dims[..] else {
                return Err(usage_error(format!("shape {spec:?}: expected MxKxN")));
            };
            let m = m_override.unwrap_or(m);
            let x =
                Tensor::<2>::from_data(TensorData::new(seeded_values(1, m * k), [m, k]), &device);
            let scale = 1.0 / (k as f32).sqrt();
            let w: Vec<f32> = seeded_values(2, n * k).iter().map(|v| v * scale).collect();
            let bias = Tensor::<1>::from_data(TensorData::new(seeded_values(3, n), [n]), &device);
            // The f32 product every layout is compared with (Burn's matmul on this device).
            let reference = guarded("the f32 reference", || {
                let w_t = Tensor::<2>::from_data(TensorData::new(w.clone(), [n, k]), &device);
                let y = x.clone().matmul(w_t.transpose()) + bias.clone().unsqueeze::<2>();
                flush(&device, y.clone())?;
                Ok(y)
            })
            .map_err(|Fail(e, _)| {
                println!("{m}x{k}x{n}: no f32 reference, so no error column: {e}")
            })
            .ok();
            for &layout in &layouts {
                let label = format!("{m}x{k}x{n} {}", layout.label());
                let timed = guarded(&label, || {
                    let w_f32 =
                        || Tensor::<2>::from_data(TensorData::new(w.clone(), [n, k]), &device);
                    flush(&device, x.clone())?;
                    match layout {
                        GemmWeights::Model(precision) => {
                            let bias = Some(burn::module::Param::from_tensor(bias.clone()));
                            let linear = match precision.bits() {
                                None => Linear::from_f32(w_f32(), bias),
                                Some(bits) => Linear::from_blocks(
                                    QuantizedMatrix::quantize(&w, n, k, bits)?,
                                    bias,
                                    &device,
                                ),
                            };
                            time_runs(&device, iters, || linear.forward(x.clone()))
                        }
                        GemmWeights::ModelWith(bits, how) => {
                            let bias = Some(burn::module::Param::from_tensor(bias.clone()));
                            let before = quantized_matmul(bits);
                            set_quantized_matmul(bits, how);
                            let linear = QuantizedMatrix::quantize(&w, n, k, bits)
                                .map(|m| Linear::from_blocks(m, bias, &device))
                                .map_err(|e| Fail(e, 1));
                            let timed = linear.and_then(|linear| {
                                time_runs(&device, iters, || linear.forward(x.clone()))
                            });
                            set_quantized_matmul(bits, before);
                            timed
                        }
                        GemmWeights::F16 => {
                            let half = burn::tensor::FloatDType::F16;
                            let w_h = w_f32().transpose().cast(half);
                            let x_h = x.clone().cast(half);
                            let b_h = bias.clone().unsqueeze::<2>().cast(half);
                            time_runs(&device, iters, || {
                                x_h.clone().matmul(w_h.clone()) + b_h.clone()
                            })
                            .map(|(t, y)| (t, y.cast(burn::tensor::FloatDType::F32)))
                        }
                        GemmWeights::Tiled(bits, tile) => {
                            let blocks = BlockWeight::new(
                                QuantizedMatrix::quantize(&w, n, k, bits)?,
                                &device,
                            );
                            let weight = &blocks;
                            if !qmatmul::supported(&x, weight) {
                                return Err(Fail("the WGSL kernel needs a wgpu device".into(), 1));
                            }
                            time_runs(&device, iters, || {
                                qmatmul::qmatmul_tiled(x.clone(), weight, Some(bias.clone()), tile)
                            })
                        }
                        GemmWeights::Burn(bits) => {
                            let w_q = burn_quantized(w_f32().transpose(), bits);
                            let b = bias.clone().unsqueeze::<2>();
                            time_runs(&device, iters, || x.clone().matmul(w_q.clone()) + b.clone())
                        }
                    }
                });
                match timed {
                    Ok((t, y)) => {
                        let gflops = 2.0 * (m * k * n) as f64 / t.as_secs_f64() / 1e9;
                        let error = match &reference {
                            Some(r) => guarded("the error", || relative_error(y, r.clone()))
                                .map_or_else(|Fail(e, _)| e, |e| format!("{e:.2e}")),
                            None => "no f32 reference".into(),
                        };
                        println!(
                            "{:<20} {:>7}  {:>9.1}  {:>8.1}  {error}",
                            format!("{m}x{k}x{n}"),
                            layout.label(),
                            t.as_secs_f64() * 1e3,
                            gflops
                        );
                    }
                    Err(Fail(msg, _)) => {
                        failed += 1;
                        println!(
                            "{:<20} {:>7}  failed: {msg}",
                            format!("{m}x{k}x{n}"),
                            layout.label()
                        );
                    }
                }
                std::io::stdout().flush().ok();
            }
        }
        none_failed(failed)
    }

    /// The weights `dequantize` times by default: `[d_out, d_in]` of the real model's linear
    /// weights as `Linear` holds them on wgpu when dequantizing (row parts of at most
    /// `DEQUANTIZE_MAX_BYTES` of f32: the MLP's `[12288, 3072]` and `[3072, 12288]` in halves).
    const DEQUANTIZE_SHAPES: &str = "3072x3072,6144x3072,1536x12288";

    fn dequantize(args: &[String]) -> Result<(), Fail> {
        let opts = Options::parse(
            args,
            &["--device", "--shapes", "--bits", "--way", "--iters"],
            &[],
            1,
            USAGE,
        )?;
        let (device, what) = device(&opts)?;
        let iters = opts.number("--iters", 3)?.max(1);
        let bits = opts
            .get("--bits")
            .unwrap_or("8,4")
            .split(',')
            .map(|b| match b {
                "8" => Ok(8u32),
                "4" => Ok(4),
                other => Err(usage_error(format!("--bits {other:?}: expected 8 or 4"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ways: Vec<&str> = opts.get("--way").unwrap_or("burn,ops").split(',').collect();
        if let Some(bad) = ways.iter().find(|w| !matches!(**w, "burn" | "ops")) {
            return Err(usage_error(format!("--way {bad:?}: expected burn or ops")));
        }
        println!("device: {what}");
        println!("weight (RxC)   bits  way   median ms    GB/s  rel. error vs host (L2)");
        let mut failed = 0;
        for spec in opts.get("--shapes").unwrap_or(DEQUANTIZE_SHAPES).split(',') {
            let dims: Vec<usize> = spec
                .split('x')
                .map(|v| v.parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| usage_error(format!("shape {spec:?}: expected RxC")))?;
            let [rows, cols] = dims[..] else {
                return Err(usage_error(format!("shape {spec:?}: expected RxC")));
            };
            let w = seeded_values(2, rows * cols);
            for &b in &bits {
                let m = QuantizedMatrix::quantize(&w, rows, cols, b).map_err(|e| Fail(e, 1))?;
                // The values every way must give: the host's dequantization of the same codes.
                let host = m.dequantize();
                for &way in &ways {
                    let timed = guarded(way, || {
                        let expected = Tensor::<2>::from_data(
                            TensorData::new(host.clone(), [rows, cols]),
                            &device,
                        );
                        let (t, y) = match way {
                            "burn" => {
                                let q = QuantWeight::new(m.clone(), &device);
                                time_runs(&device, iters, || q.dequantize())?
                            }
                            _ => {
                                let blocks = BlockWeight::new(m.clone(), &device);
                                time_runs(&device, iters, || blocks.dequantize())?
                            }
                        };
                        Ok((t, relative_error(y, expected)?))
                    });
                    let label = format!("{rows}x{cols}");
                    match timed {
                        Ok((t, error)) => {
                            // Codes and scales read, f32 values written.
                            let bytes = (rows * cols) as f64 * (4.0 + b as f64 / 8.0)
                                + (rows * cols / 32) as f64 * 4.0;
                            println!(
                                "{label:<14} {b:>4}  {way:<4}  {:>9.2}  {:>6.2}  {error:.2e}",
                                t.as_secs_f64() * 1e3,
                                bytes / t.as_secs_f64() / 1e9
                            );
                        }
                        Err(Fail(msg, _)) => {
                            failed += 1;
                            println!("{label:<14} {b:>4}  {way:<4}  failed: {msg}");
                        }
                    }
                    std::io::stdout().flush().ok();
                }
            }
        }
        none_failed(failed)
    }

    /// `--tokens S` (a short sequence) or the pipeline layout of `--resolution`, `--layers`.
    fn block_shape(opts: &Options) -> Result<BlockShape, Fail> {
        let s_txt = opts.number("--txt", 300)?;
        if let Some(tokens) = opts.get("--tokens").map(|_| opts.number("--tokens", 0)) {
            let tokens = tokens?;
            if tokens == 0 {
                return Err(usage_error("--tokens must be at least 1"));
            }
            return Ok(BlockShape::frames(1, 1, tokens, s_txt));
        }
        let resolution = opts.number("--resolution", 640)? as u32;
        let layers = opts.number("--layers", 4)?;
        Ok(BlockShape::pipeline(resolution, layers, s_txt)?)
    }

    fn block(args: &[String]) -> Result<(), Fail> {
        let opts = Options::parse(
            args,
            &[
                "--device",
                "--bits",
                "--blocks",
                "--apply",
                "--iters",
                "--resolution",
                "--layers",
                "--txt",
                "--tokens",
                "--qmatmul",
                "--scores-mib",
            ],
            &["--profile"],
            1,
            USAGE,
        )?;
        let (device, what) = device(&opts)?;
        let precision = precision_of_bits(opts.get("--bits").unwrap_or("4"))?;
        if let Some(bits) = precision.bits() {
            match opts.get("--qmatmul") {
                None => {}
                Some("fused") => set_quantized_matmul(bits, QuantizedMatmul::Fused),
                Some("deq") => set_quantized_matmul(bits, QuantizedMatmul::Dequantize),
                Some("f16") => set_quantized_matmul(bits, QuantizedMatmul::DequantizeF16),
                Some(other) => {
                    return Err(usage_error(format!(
                        "--qmatmul {other:?}: use fused, deq or f16"
                    )));
                }
            }
            println!(
                "quantized weights on wgpu: {:?} (model::nn::QuantizedMatmul)",
                quantized_matmul(bits)
            );
        }
        let n_blocks = opts.number("--blocks", 1)?.max(1);
        let applications = opts.number("--apply", n_blocks)?.max(1);
        let iters = opts.number("--iters", 1)?.max(1);
        let scores_mib = opts.number("--scores-mib", 1024usize)?;
        let limits = BlockLimits {
            mlp_max_tokens: None,
            attention_scores_bytes: (scores_mib > 0).then_some(scores_mib << 20),
        };
        let shape = block_shape(&opts)?;
        let (s_img, s_txt) = (shape.s_img(), shape.s_txt);
        println!("device: {what}");
        println!(
            "blocks: {n_blocks} x (dim {DIM}, 24 heads x 128, ff {FF}), {} weights, random \
             (seeded, PyTorch default init)",
            name(precision)
        );
        if applications != n_blocks {
            println!(
                "one forward applies {applications} blocks, cycling over the {n_blocks} loaded \
                 (the same work per block; weight memory is that of {n_blocks})"
            );
        }
        println!("tokens: {s_img} image + {s_txt} text = {}", s_img + s_txt);
        println!(
            "attention: {}",
            match limits.attention_scores_bytes {
                Some(b) => format!("runs of query rows within {} MiB of scores", b >> 20),
                None => "the flash kernel".into(),
            }
        );

        let start = Instant::now();
        let source = blocks_source(n_blocks, HEADS, 1)?;
        let blocks = pollster::block_on(load_blocks(&source, HEADS, &device, precision))?;
        let inputs = BlockInputs::seeded(&shape, HEADS, 2, &device)?;
        flush(&device, inputs.img.clone())?;
        println!(
            "load: {:.1} s (generate BF16 + convert/quantize + upload)",
            start.elapsed().as_secs_f64()
        );
        println!("memory after load: {}", memory_line(&device));

        let peak_in_use = std::cell::Cell::new(0u64);
        let run = |record: bool| -> Result<Duration, Fail> {
            let start = Instant::now();
            let (mut img, mut txt) = (inputs.img.clone(), inputs.txt.clone());
            for (i, b) in blocks.iter().cycle().take(applications).enumerate() {
                (txt, img) = b.forward_chunked(img, txt, None, &inputs.temb, &inputs.rope, limits);
                if record {
                    flush(&device, img.clone())?;
                    if let Some(u) = device.memory_pool_usage() {
                        peak_in_use.set(peak_in_use.get().max(u.bytes_in_use));
                    }
                    // Progress, so that a run stopped early still tells the rate.
                    if i < 3 || (i + 1) % 10 == 0 {
                        println!(
                            "  warm-up: {} block(s) in {:.2} s",
                            i + 1,
                            start.elapsed().as_secs_f64()
                        );
                        std::io::stdout().flush().ok();
                    }
                }
            }
            flush(&device, img)?;
            flush(&device, txt)?;
            Ok(start.elapsed())
        };
        let warm = run(true)?;
        println!("warm-up: {:.2} s", warm.as_secs_f64());
        // Printed now too, so that a run stopped during the timed iterations still reports it.
        println!(
            "peak device memory during the warm-up: {}",
            if device.memory_pool_usage().is_some() {
                format!(
                    "{:.2} GiB in use (largest seen after a block)",
                    gib(peak_in_use.get())
                )
            } else {
                "not reported by this backend".into()
            }
        );
        let times = (0..iters)
            .map(|_| run(false))
            .collect::<Result<Vec<_>, _>>()?;
        let forward = median(times).as_secs_f64();
        let per_block = forward / applications as f64;
        println!("forward of {applications} blocks: {forward:.3} s (median of {iters})");
        let flops = block_flops(s_img, s_txt);
        println!(
            "per block: {:.3} s ({:.1} GFLOP/s of {:.1} GFLOP)",
            per_block,
            flops / per_block / 1e9,
            flops / 1e9
        );
        println!(
            "extrapolated: {LAYERS} blocks {:.1} s per forward; 100 forwards (50 steps x 2 for \
             true CFG) {:.1} min",
            per_block * LAYERS as f64,
            per_block * LAYERS as f64 * 100.0 / 60.0
        );
        let real = BlockShape::pipeline(640, 4, 300)?;
        if (s_img, s_txt) != (real.s_img(), real.s_txt) {
            let f = forward_flops(real.s_img(), real.s_txt);
            let rate = flops / per_block;
            println!(
                "at 640², 4 layers ({} + 300 tokens) one forward is {:.1} TFLOP: {:.0} s at this \
                 rate (attention grows with S², so a short-sequence rate is optimistic)",
                real.s_img(),
                f / 1e12,
                f / rate
            );
        }
        match device.memory_pool_usage() {
            Some(u) => println!(
                "peak device memory: {:.2} GiB in use (largest seen after a block), {:.2} GiB \
                 reserved by the pool after the run",
                gib(peak_in_use.get().max(u.bytes_in_use)),
                gib(u.bytes_reserved)
            ),
            None => println!("peak device memory: not reported by this backend"),
        }
        if opts.flag("--profile") {
            profile_block(&device, &blocks[0], &inputs, limits)?;
        }
        Ok(())
    }

    /// One block application with the device awaited at each `model::profile::mark`: the time
    /// of every stage, then their sum against the same block unprofiled.
    fn profile_block(
        device: &Device,
        block: &QwenImageTransformerBlock,
        inputs: &BlockInputs,
        limits: BlockLimits,
    ) -> Result<(), Fail> {
        use qwen_layered_web::model::profile;
        use std::sync::{Arc, Mutex};
        let apply = || {
            let (img, txt) = (inputs.img.clone(), inputs.txt.clone());
            block.forward_chunked(img, txt, None, &inputs.temb, &inputs.rope, limits)
        };
        // Unprofiled, for comparison (warm: the kernels are compiled and tuned by now).
        let start = Instant::now();
        let (txt, img) = apply();
        flush(device, img)?;
        flush(device, txt)?;
        let plain = start.elapsed();

        let stages: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::default();
        let last = Arc::new(Mutex::new(Instant::now()));
        {
            let (stages, last, device) = (stages.clone(), last.clone(), device.clone());
            profile::set_hook(Some(Box::new(move |stage| {
                let _ = device.sync();
                let now = Instant::now();
                if let (Ok(mut last), Ok(mut stages)) = (last.lock(), stages.lock()) {
                    stages.push((stage, now - *last));
                    *last = now;
                }
            })));
        }
        device
            .sync()
            .map_err(|e| Fail(format!("device sync: {e:?}"), 1))?;
        *last.lock().expect("not poisoned") = Instant::now();
        let start = Instant::now();
        let result = guarded("the profiled block", || {
            let (txt, img) = apply();
            flush(device, img)?;
            flush(device, txt)
        });
        let profiled = start.elapsed();
        profile::set_hook(None);
        result?;
        let stages = stages.lock().expect("not poisoned");
        println!("profile of one block (device awaited after each stage):");
        let total: f64 = stages.iter().map(|(_, d)| d.as_secs_f64()).sum();
        for (stage, d) in stages.iter() {
            println!(
                "  {stage:<36} {:>8.1} ms  {:>5.1} %",
                d.as_secs_f64() * 1e3,
                100.0 * d.as_secs_f64() / total.max(1e-12)
            );
        }
        println!(
            "  sum of stages {:.1} ms; profiled block {:.1} ms; the same block unprofiled {:.1} ms",
            total * 1e3,
            profiled.as_secs_f64() * 1e3,
            plain.as_secs_f64() * 1e3
        );
        Ok(())
    }

    fn attention(args: &[String]) -> Result<(), Fail> {
        use qwen_layered_web::bench::HEAD_DIM;
        use qwen_layered_web::kernels::attention::{
            attention_reference, chunked_attention, flash_attention, flash_attention_tiled,
        };
        let opts = Options::parse(
            args,
            &[
                "--device",
                "--tokens",
                "--heads",
                "--iters",
                "--which",
                "--max-scores-gib",
                "--chunk-mib",
            ],
            &[],
            1,
            USAGE,
        )?;
        let (device, what) = device(&opts)?;
        let s = opts.number("--tokens", 9900)?.max(1);
        let heads = opts.number("--heads", HEADS)?.max(1);
        let iters = opts.number("--iters", 3)?.max(1);
        let max_scores = opts.number("--max-scores-gib", 4.0f64)?;
        let chunk_bytes = opts.number("--chunk-mib", 1024usize)?.max(1) << 20;
        let which: Vec<&str> = opts
            .get("--which")
            .unwrap_or("flash,burn,twin,chunked")
            .split(',')
            .collect();
        // Checked before anything runs, so that a typo costs no timing run.
        if let Some(bad) = which
            .iter()
            .find(|k| !["flash", "flash16", "burn", "twin", "chunked"].contains(k))
        {
            return Err(usage_error(format!(
                "--which {bad:?}: use flash, flash16, burn, twin or chunked"
            )));
        }
        println!("device: {what}");
        println!("q, k, v: [1, {heads}, {s}, {HEAD_DIM}] f32, unmasked");
        let dims = [1, heads, s, HEAD_DIM];
        let n = dims.iter().product();
        let qkv = |seed: u64| {
            Tensor::<4>::from_data(TensorData::new(seeded_values(seed, n), dims), &device)
        };
        let (q, k, v) = (qkv(1), qkv(2), qkv(3));
        flush(&device, q.clone() + k.clone() + v.clone())?;
        let flops = 4.0 * (s as f64).powi(2) * HEAD_DIM as f64 * heads as f64;
        let scores_gib = gib((s * s * heads * 4) as u64);
        let mut failed = 0;
        let mut first: Option<(&str, Tensor<4>)> = None;
        for kind in which {
            let run = || -> Tensor<4> {
                let (q, k, v) = (q.clone(), k.clone(), v.clone());
                match kind {
                    "flash" => {
                        flash_attention(q, k, v).expect("flash attention takes these inputs")
                    }
                    "flash16" => flash_attention_tiled(q, k, v, 16)
                        .expect("flash attention takes these inputs at this tiling"),
                    "burn" => burn::tensor::module::attention(
                        q,
                        k,
                        v,
                        None,
                        None,
                        burn::tensor::ops::AttentionModuleOptions::default(),
                    ),
                    "chunked" => chunked_attention(q, k, v, chunk_bytes),
                    _ => attention_reference(q, k, v),
                }
            };
            if kind == "twin" && scores_gib > max_scores {
                println!(
                    "{kind:<7} skipped: its [S, S] scores take {scores_gib:.1} GiB \
                     (over --max-scores-gib {max_scores})"
                );
                continue;
            }
            match guarded(kind, || time_runs(&device, iters, run)) {
                Ok((t, out)) => {
                    // Each output against the first kind's, so that a fast wrong one shows.
                    let error = match &first {
                        Some((name, r)) => guarded("the error", || relative_error(out, r.clone()))
                            .map_or_else(|Fail(e, _)| e, |e| format!("{e:.2e} vs {name}")),
                        None => {
                            first = Some((kind, out));
                            String::new()
                        }
                    };
                    println!(
                        "{kind:<7} {:>9.1} ms  {:>8.1} GFLOP/s  {error}",
                        t.as_secs_f64() * 1e3,
                        flops / t.as_secs_f64() / 1e9
                    )
                }
                Err(Fail(msg, _)) => {
                    failed += 1;
                    println!("{kind:<7} failed: {msg}");
                }
            }
            std::io::stdout().flush().ok();
        }
        none_failed(failed)
    }

    fn cosine(args: &[String]) -> Result<(), Fail> {
        let opts = Options::parse(
            args,
            &["--device", "--resolution", "--layers", "--txt", "--tokens"],
            &[],
            1,
            USAGE,
        )?;
        let (device, what) = device(&opts)?;
        let shape = block_shape(&opts)?;
        println!("device: {what}");
        println!(
            "one block at full width, tokens: {} image + {} text",
            shape.s_img(),
            shape.s_txt
        );
        let start = Instant::now();
        let results = pollster::block_on(bench::block_agreement(
            &shape,
            HEADS,
            1,
            2,
            &[Precision::Q8, Precision::Q4],
            &device,
        ))?;
        let mut ok = true;
        for a in &results {
            let goal = if a.precision == Precision::Q8 {
                0.999
            } else {
                0.99
            };
            println!(
                "{} vs f32: cosine image {:.6}, text {:.6}; updates (output - input): image \
                 {:.6}, text {:.6}; goal >= {goal}",
                name(a.precision),
                a.img,
                a.txt,
                a.img_delta,
                a.txt_delta
            );
            ok &= a.img >= goal && a.txt >= goal;
        }
        println!("({:.1} s)", start.elapsed().as_secs_f64());
        if ok {
            Ok(())
        } else {
            Err(Fail("an output cosine is under its goal".into(), 1))
        }
    }

    fn make_file(args: &[String]) -> Result<(), Fail> {
        let opts = Options::parse(args, &["--blocks", "--seed"], &[], 1, USAGE)?;
        let path = opts.one_positional("PATH")?;
        let blocks = opts.number("--blocks", 2)?.max(1);
        let source = blocks_source(blocks, HEADS, opts.number("--seed", 1)? as u64)?;
        let file = source.file().to_owned();
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        let chunk = 64u64 << 20;
        let mut at = 0;
        while at < source.len() {
            let len = chunk.min(source.len() - at);
            out.write_all(&pollster::block_on(source.read(&file, at, len))?)?;
            at += len;
        }
        out.flush()?;
        println!(
            "{path}: {blocks} blocks, {:.2} GB",
            source.len() as f64 / 1e9
        );
        Ok(())
    }

    /// Reads the whole file sequentially in the loader's read steps ([`DEFAULT_READ_CHUNK`])
    /// into one reused buffer; the bytes read.
    fn read_raw(path: &Path) -> Result<u64, Fail> {
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; DEFAULT_READ_CHUNK as usize];
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// Drops `path`'s pages from the page cache (`posix_fadvise(DONTNEED)`; works for clean
    /// pages of any file this process can open), so that the next read comes from the disk.
    #[cfg(target_os = "linux")]
    fn evict(path: &Path) -> Result<(), Fail> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path)?;
        // SAFETY: a plain syscall on a file descriptor that `f` keeps open.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(Fail(
                format!(
                    "posix_fadvise(DONTNEED) on {}: {}",
                    path.display(),
                    std::io::Error::from_raw_os_error(rc)
                ),
                1,
            ));
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn evict(_: &Path) -> Result<(), Fail> {
        Err(usage_error("--cache cold needs Linux (posix_fadvise)"))
    }

    fn load(args: &[String]) -> Result<(), Fail> {
        let opts = Options::parse(args, &["--precision", "--cache"], &["--stored"], 1, USAGE)?;
        let path = Path::new(opts.one_positional("PATH")?);
        let precision: Precision = opts
            .get("--precision")
            .unwrap_or("f32")
            .parse()
            .map_err(usage_error)?;
        let caches: &[bool] = match opts.get("--cache").unwrap_or("both") {
            "warm" => &[false],
            "cold" => &[true],
            "both" => &[false, true],
            other => return Err(usage_error(format!("--cache {other}: warm, cold or both"))),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| usage_error("PATH must name a file"))?
            .to_owned();
        let source = DirSource::new(dir);
        let size = pollster::block_on(source.size(&file))?;
        println!(
            "file: {} ({:.2} GB), read steps of {} MiB",
            path.display(),
            size as f64 / 1e9,
            DEFAULT_READ_CHUNK >> 20
        );
        let device = Device::flex();
        let stored = match opts.flag("--stored") {
            true => Some(write_stored(&source, dir, &file, precision)?),
            false => None,
        };
        // The timed raw read: the file, or (with --stored) the copy, which the load reads
        // instead.
        let raw_path = match &stored {
            Some(copy) => dir.join(copy),
            None => path.to_path_buf(),
        };
        let size = std::fs::metadata(&raw_path)?.len();
        for &cold in caches {
            let cache = if cold { "cold" } else { "warm" };
            let prepare = || {
                for p in [path, raw_path.as_path()] {
                    if cold {
                        evict(p)?
                    } else {
                        read_raw(p)?;
                    }
                }
                Ok::<(), Fail>(())
            };
            prepare()?;
            let start = Instant::now();
            let read = read_raw(&raw_path)?;
            let raw = start.elapsed().as_secs_f64();
            println!(
                "{cache}: raw sequential read: {raw:.2} s, {:.2} GB/s",
                read as f64 / raw / 1e9
            );
            prepare()?;
            let start = Instant::now();
            let loaded = pollster::block_on(load_all(
                &source,
                &file,
                stored.as_deref(),
                &device,
                precision,
            ))?;
            let t = start.elapsed().as_secs_f64();
            let tensors = loaded.0.len() + loaded.1.len();
            drop(loaded); // freeing the model is not part of loading it
            println!(
                "{cache}: loader ({}{}, {tensors} tensors to the CPU device): {t:.2} s, {:.2} \
                 GB/s = {:.0} % of the raw read (goal >= 70 %)",
                name(precision),
                if stored.is_some() {
                    ", from the stored copy"
                } else {
                    ""
                },
                size as f64 / t / 1e9,
                100.0 * raw / t
            );
        }
        Ok(())
    }

    /// Writes the stored quantized copy of `file` (every tensor; its linear weights, every 2-D
    /// `*.weight` as [`load_all`] takes them, in `precision`) beside it, timed; its file name.
    fn write_stored(
        source: &DirSource,
        dir: &Path,
        file: &str,
        precision: Precision,
    ) -> Result<String, Fail> {
        let folder = pollster::block_on(SafetensorsFolder::open_files(
            source,
            "",
            &[file.to_owned()],
        ))?;
        let is_linear = |key: &str, shape: &[usize]| shape.len() == 2 && key.ends_with(".weight");
        let layout = QuantizedLayout::new(&folder, precision, "bench", is_linear, &[])?;
        let copy = format!("{file}.stored-{}_0.gguf", name(precision));
        let path = dir.join(&copy);
        let mut out = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&path)?);
        let start = Instant::now();
        pollster::block_on(write_quantized(
            source,
            &layout,
            None,
            async |bytes: &[u8]| {
                out.write_all(bytes)
                    .map_err(|e| qwen_layered_web::Error::Source {
                        file: copy.clone(),
                        reason: e.to_string(),
                    })
            },
            |_, _| {},
        ))?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())?;
        let t = start.elapsed().as_secs_f64();
        println!(
            "stored copy {copy}: {} linear weights, {:.2} GB read → {:.2} GB written in {t:.2} s \
             ({:.2} GB/s of the bf16 read)",
            layout.counts().1,
            layout.source_bytes() as f64 / 1e9,
            layout.size() as f64 / 1e9,
            layout.source_bytes() as f64 / t / 1e9
        );
        Ok(copy)
    }

    /// Loads every tensor of `file` as the models do (2-D `*.weight` as linear layers with
    /// their bias, anything else as a plain tensor), or of its stored copy `stored` when
    /// given; what was loaded.
    async fn load_all(
        source: &DirSource,
        file: &str,
        stored: Option<&str>,
        device: &Device,
        precision: Precision,
    ) -> Result<(Vec<Linear>, Vec<Tensor<1>>), Fail> {
        let weights = match stored {
            Some(name) => Checkpoint::Gguf(GgufFile::open(source, name).await?),
            None => Checkpoint::Safetensors(
                SafetensorsFolder::open_files(source, "", &[file.to_owned()]).await?,
            ),
        };
        let keys: Vec<String> = weights.keys().into_iter().map(str::to_owned).collect();
        let mut loader = weights.loader(source, device).with_precision(precision);
        let mut kept: Vec<Tensor<1>> = Vec::new();
        let mut linears: Vec<Linear> = Vec::new();
        for key in &keys {
            let shape = weights
                .shape(key)
                .map(<[usize]>::to_vec)
                .unwrap_or_default();
            if let (Some(prefix), [d_out, d_in]) = (key.strip_suffix(".weight"), &shape[..]) {
                let bias = weights.contains(&format!("{prefix}.bias"));
                linears.push(loader.linear(prefix, *d_in, *d_out, bias).await?);
            } else if key.strip_suffix(".bias").is_some_and(|prefix| {
                weights
                    .shape(&format!("{prefix}.weight"))
                    .is_some_and(|s| s.len() == 2)
            }) {
                // Taken with its weight.
            } else {
                let n = shape.iter().product();
                kept.push(loader.tensor::<1>(key, [n]).await.map_err(|e| {
                    Fail(
                        format!("{key}: shape {shape:?} (only 1-D and linear tensors here): {e}"),
                        1,
                    )
                })?);
            }
        }
        loader.finish()?;
        device
            .sync()
            .map_err(|e| Fail(format!("device sync: {e:?}"), 1))?;
        Ok((linears, kept))
    }
}
