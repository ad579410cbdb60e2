//! `qwen-layered`: the native command-line program, sharing the library with the browser app.
//!
//! Commands: `decompose` (image → N RGBA layers with a diffusers-layout model folder),
//! `caption` (describe an image with the model's Qwen2.5-VL, the pipeline's empty-prompt path),
//! `encode-prompt` (prompt → `prompt_embeds` with the model's text encoder), `inspect` (list
//! the tensors of a safetensors file, a sharded index, a model folder or a GGUF file), `gpu`
//! (native adapter report + matmul self-test) and `fetch` (download a model repository into a
//! local cache folder, resumable and verified). See README "Command line".

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    native::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::ops::ControlFlow;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Instant;

    use burn::tensor::{Device, Tensor, TensorData};
    use qwen_layered_web::caption::{CaptionLanguage, CaptionOptions, Captioner};
    use qwen_layered_web::cli_args::{self, Fail, Options};
    use qwen_layered_web::gpu::{GpuReport, KeyLimits, matmul_self_test, read_f32};
    use qwen_layered_web::image_io::decode_image;
    use qwen_layered_web::model::nn::{QuantizedMatmul, set_quantized_matmul};
    use qwen_layered_web::model::stored_copy_layout;
    use qwen_layered_web::model::transformer::{
        QwenImageTransformer2DModel, QwenImageTransformerConfig,
    };
    use qwen_layered_web::pipeline::{
        DecomposeParams, Dimensions, FlowMatchEulerDiscreteConfig, LayeredPipeline, MemoryPlan,
        ModelConfigs, Noise, PlannedPipeline, Progress, PromptEmbeds, default_budget_bytes,
        resize_rgba_lanczos, show_bytes,
    };
    use qwen_layered_web::protocol::{MemorySettings, parse_bytes};
    use qwen_layered_web::text::{
        DEFAULT_MAX_SEQUENCE_LENGTH, DEFAULT_NEGATIVE_PROMPT, EmbeddingMode, PromptEncoder,
        QwenTokenizer, TOKENIZER_FOLDER, TextEncoderLoad, needs_caption,
    };
    use qwen_layered_web::weights::{
        DirSource, GgufFile, Precision, SafetensorsFolder, WeightSource, read_json,
        stored_copy_path, stored_copy_paths_ever, to_f32,
    };
    use safetensors::{Dtype, SafeTensors};

    const USAGE: &str = "usage: qwen-layered <command> [options]

commands:
  decompose  split an image into N RGBA layers (bottom to top) with a diffusers model folder
             --model DIR --image IN.png [--prompt TEXT | --prompt-embeds F.safetensors]
             (--noise F.safetensors | --seed K) --out OUTDIR
             [--layers N (4)] [--steps S (50)] [--resolution R (640)]
             [--true-cfg-scale F (4.0)]
             [--negative-prompt TEXT (\" \" with --prompt) | --negative-prompt-embeds F.safetensors]
             [--max-sequence-length L (512)]
             [--cfg-normalize] [--scheduler-config F.json] [--device cpu|wgpu (cpu)]
             [--precision f32|q8|q4 (f32)] [--transformer-gguf F.gguf (default, with q8/q4:
             the transformer's stored copy in the model folder, if it has one)]
             [--text-precision f32|q8|q4 (f32)] [--gather-embedding]
             [--gpu-budget B] [--gpu-max-binding B] [--gpu-max-buffer B]
             [--f16: with --device wgpu and q8/q4 weights, multiply them dequantized with
             f16 operands (each input row scaled into [-1, 1], f32 accumulation; the GPU
             must have shader-f16); not the default until its speed is measured]
             no prompt (or \"\" or \" \"): the image is captioned first, as the reference
             does, with [--zh] [--max-new-tokens N (512)] as for `caption`
             on --device wgpu the run follows the app's memory plan for the device's
             limits and a budget (--gpu-budget, default 4G or maxBufferSize if larger;
             give a large GPU's memory here, drivers may report a larger maxBufferSize):
             transformer resident or streamed, VAE tiled, weights over the largest buffer
             split; --gpu-max-binding/--gpu-max-buffer force lower limits (any device);
             B is bytes with an optional K/M/G suffix; on the CPU the run is the
             reference's unless one of them is given
             a GPU error during the run (out of memory, say) ends it with that error and
             exit 1, writing nothing; [--gpu-fault error] causes one after the first step
             (a buffer over maxBufferSize), for tests, as the page's ?gpu-fault=error
  caption    describe an image with the model's Qwen2.5-VL, as the pipeline does when the
             prompt is empty; the caption goes to stdout, tokens stream to stderr
             --model DIR --image IN.png [--max-new-tokens N (512)] [--zh]
             [--resolution R (640)] [--as-is] [--device cpu|wgpu (cpu)]
             [--text-precision f32|q8|q4 (f32)] [--gather-embedding]
             (--as-is: caption the image as given instead of first resizing it to the
             working size of --resolution, as the pipeline does)
  encode-prompt  run the model's tokenizer and text encoder on a prompt and write its
             prompt_embeds [1, L, D] (f32) as the tensor \"prompt_embeds\" (any text, \" \" too)
             --model DIR --prompt TEXT --out F.safetensors
             [--max-sequence-length L (512)] [--device cpu|wgpu (cpu)]
             [--text-precision f32|q8|q4 (f32)] [--gather-embedding]
             (--text-precision: the text encoder's linear layers, and the vision tower's
             when captioning; --gather-embedding: read the token embedding's rows from the
             weight files as prompts need them instead of loading the whole table, as the
             browser does)
  inspect    PATH [--tensor NAME [--values K (10)]]: list the tensors (name, dtype, shape)
             of a .safetensors file, a *.safetensors.index.json, a model folder, a pipeline
             folder, or a .gguf file (also its metadata, ggml types and byte sizes); with
             --tensor, print the first K values of one tensor as f32 (row-major), one a line
  quantize   store a model folder's transformer with its linear weights already 8-/4-bit, as
             one GGUF file (Q8_0/Q4_0 blocks, the rest as stored): what the page keeps after
             a first load; decompose --transformer-gguf F.gguf --precision q4|q8 then loads
             exactly the model it would quantize at load, without reading bf16 again
             --model DIR --precision q8|q4 --out F.gguf
             --component text_encoder: the whole text encoder, written beside its
             checkpoint (DIR/text_encoder/qwen-layered-v<format>-q4_0.gguf), where every
             command with --text-precision q4 (or q8) finds it and reads it instead of the
             checkpoint (which may then be removed)
  gpu        acquire the native wgpu device Burn uses, print its adapter, limits and features,
             and check a 256x256x256 matmul on it against the CPU backend
  fetch      REPO: download a model repository (owner/name) into a local cache folder,
             resumable (.part files) and verified (sha256 / git blob sha1 from the hub's listing)
             [--revision R (main)] [--base-url U (HF_ENDPOINT or https://huggingface.co)]
             [--dir D (QWEN_LAYERED_CACHE or ~/.cache/qwen-layered)]
             [--components transformer,vae,... (all)] [--chunk-mib N (32)]
             [--files GLOB,GLOB...: only the files these patterns match, each one at least,
             e.g. '*-Q4_0.gguf' of a GGUF repository holding every quantization]
             [--precision q8|q4] [--text-precision q8|q4]: keep the transformer / the text
             encoder as its stored 8-/4-bit copy (what the page keeps, and what decompose
             --precision / --text-precision then reads), quantized shard by shard as the
             checkpoint arrives; each shard is deleted once the copy holds it
             refused up front when the disk cannot hold the peak; [--dry-run]: plan, check
             and say what it would fetch and need, fetching nothing
             prints the model folder (D/owner/name/COMMIT) on stdout
  help       print this text";

    fn usage_error(msg: impl Into<String>) -> Fail {
        cli_args::usage_error(USAGE, msg)
    }

    pub fn main() -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let result = match args.first().map(String::as_str) {
            Some("gpu") => return gpu(),
            Some("decompose") => decompose(&args[1..]),
            Some("caption") => caption(&args[1..]),
            Some("encode-prompt") => encode_prompt(&args[1..]),
            Some("inspect") => inspect(&args[1..]),
            Some("fetch") => fetch(&args[1..]),
            Some("quantize") => quantize(&args[1..]),
            Some("help" | "--help" | "-h") | None => {
                println!("{USAGE}");
                Ok(())
            }
            Some(other) => Err(usage_error(format!("unknown command {other:?}"))),
        };
        // A recorded GPU error explains whatever else went wrong, and taints a success.
        cli_args::exit_code(check_gpu().and(result))
    }

    /// The first uncaptured GPU error of this run (out of memory, a validation error) and the
    /// wgpu device, recorded by the handler [`watch_gpu_errors`] installs in place of cubecl's,
    /// which panics (the worker does the same): commands stop at their next check with it.
    static GPU_ERROR: Mutex<Option<String>> = Mutex::new(None);
    static WGPU_DEVICE: OnceLock<wgpu::Device> = OnceLock::new();

    /// Records uncaptured errors of `wgpu_device` into [`GPU_ERROR`], after a first operation
    /// on `device` (the runtime installs its own handler when its stream starts).
    fn watch_gpu_errors(device: &Device, wgpu_device: &wgpu::Device) -> Result<(), Fail> {
        let first = Tensor::<1>::from_data(TensorData::new(vec![1.0f32], [1]), device);
        first
            .try_into_data()
            .map_err(|e| Fail(format!("a first read from the GPU failed: {e}"), 1))?;
        wgpu_device.on_uncaptured_error(Arc::new(|error: wgpu::Error| {
            let text = error
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("GPU error: {text}");
            if let Ok(mut slot) = GPU_ERROR.lock()
                && slot.is_none()
            {
                *slot = Some(text);
            }
        }));
        let _ = WGPU_DEVICE.set(wgpu_device.clone());
        Ok(())
    }

    /// Whether a GPU error has been recorded.
    fn gpu_failed() -> bool {
        GPU_ERROR.lock().map_or(true, |e| e.is_some())
    }

    /// The recorded GPU error as the command's failure, if any.
    fn check_gpu() -> Result<(), Fail> {
        match GPU_ERROR.lock().ok().and_then(|e| e.clone()) {
            Some(error) => Err(Fail(
                format!(
                    "the GPU reported an error; the run stopped there and wrote no file: \
                     {error}\n(if it ran out of memory: a smaller --resolution, q4 weights, or \
                     for decompose a smaller --gpu-budget)"
                ),
                1,
            )),
            None => Ok(()),
        }
    }

    /// Causes an uncaptured GPU error on purpose (`--gpu-fault error`, for tests): a buffer
    /// one step over the device's `maxBufferSize`, as the page's `?gpu-fault=error` does.
    fn cause_gpu_fault() {
        if let Some(device) = WGPU_DEVICE.get() {
            eprintln!("causing a GPU error on purpose (--gpu-fault error)");
            let size = device.limits().max_buffer_size.saturating_add(4) & !3;
            let _ = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("gpu-fault: a buffer over maxBufferSize"),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
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
        let start = Instant::now();
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

    /// `--zh` and `--max-new-tokens N` (at least 1), shared by `caption` and `decompose`.
    fn caption_options(opts: &Options) -> Result<CaptionOptions, Fail> {
        let options = CaptionOptions {
            language: if opts.flag("--zh") {
                CaptionLanguage::Chinese
            } else {
                CaptionLanguage::English
            },
            max_new_tokens: opts
                .number("--max-new-tokens", CaptionOptions::default().max_new_tokens)?,
            seed: 0,
        };
        if options.max_new_tokens == 0 {
            return Err(usage_error("--max-new-tokens must be at least 1"));
        }
        Ok(options)
    }

    /// `--text-precision` and `--gather-embedding`: how the text encoder (and captioner) load;
    /// linear weights over `largest_buffer` bytes (the device's largest buffer) are split by
    /// rows.
    /// Says so when the model folder has a stored quantized copy of the text encoder for that
    /// precision (`quantize --component text_encoder`), which the loaders then read.
    fn text_load(opts: &Options, largest_buffer: Option<u64>) -> Result<TextEncoderLoad, Fail> {
        let precision: Precision = opts
            .get("--text-precision")
            .unwrap_or("f32")
            .parse()
            .map_err(usage_error)?;
        let beside = stored_copy_path("text_encoder", precision);
        if let (Some(model), Some(copy)) = (opts.get("--model"), beside) {
            if Path::new(model).join(&copy).is_file() {
                eprintln!("text encoder: read from the stored copy {model}/{copy}");
            } else {
                for old in stale_copies(Path::new(model), "text_encoder") {
                    eprintln!(
                        "text encoder: {model}/{old} is a stored copy of an older format that \
                         this version no longer reads, so the checkpoint is quantized at load; \
                         `quantize --model {model} --component text_encoder --precision \
                         {}` writes the current one (then {old} can be deleted)",
                        format!("{precision:?}").to_lowercase()
                    );
                }
            }
        }
        Ok(TextEncoderLoad {
            precision,
            embedding: if opts.flag("--gather-embedding") {
                EmbeddingMode::Gathered
            } else {
                EmbeddingMode::Resident
            },
            max_part_bytes: largest_buffer,
        })
    }

    /// The stored copies of `folder` in the model folder `model` that this build no longer
    /// reads (names of an older [`stored_format`], relative to `model`).
    fn stale_copies(model: &Path, folder: &str) -> Vec<String> {
        let current = [Precision::Q8, Precision::Q4].map(|p| stored_copy_path(folder, p));
        stored_copy_paths_ever(folder)
            .into_iter()
            .filter(|path| !current.iter().flatten().any(|c| c == path))
            .filter(|path| model.join(path).is_file())
            .collect()
    }

    /// The single tensor of a safetensors file, as f32 with its name and shape.
    fn read_single_tensor(path: &Path) -> Result<(String, Vec<usize>, Vec<f32>), Fail> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Fail(format!("reading {file}: {e}"), 1))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Fail(format!("{file} is not a safetensors file: {e}"), 1))?;
        let names = st.names();
        let [name] = names.as_slice() else {
            return Err(Fail(
                format!(
                    "{file} must hold exactly one tensor, it holds {}: {:?}",
                    names.len(),
                    names
                ),
                1,
            ));
        };
        let view = st
            .tensor(name)
            .map_err(|e| Fail(format!("{file}: {e}"), 1))?;
        let values = to_f32(view.data(), view.dtype(), name, &file)?;
        Ok((name.to_string(), view.shape().to_vec(), values))
    }

    /// Reads a `[1, L, D]` tensor file (`what` names its role), checking its shape.
    fn read_tensor3(
        what: &str,
        path: &Path,
        want: [Option<usize>; 3],
        device: &Device,
    ) -> Result<Tensor<3>, Fail> {
        let (name, shape, values) = read_single_tensor(path)?;
        let fits = shape.len() == 3
            && shape
                .iter()
                .zip(want)
                .all(|(&s, w)| w.is_none_or(|w| w == s) && s > 0);
        if !fits {
            let want: Vec<String> = want
                .iter()
                .zip(["B", "L", "D"])
                .map(|(w, letter)| w.map_or(letter.to_owned(), |v| v.to_string()))
                .collect();
            return Err(Fail(
                format!(
                    "{what} {}: tensor {name:?} has shape {shape:?}, expected [{}]",
                    path.display(),
                    want.join(", ")
                ),
                1,
            ));
        }
        Ok(Tensor::from_data(
            TensorData::new(values, [shape[0], shape[1], shape[2]]),
            device,
        ))
    }

    /// `--device cpu|wgpu` (default cpu), with the GPU's limits (`None` on the CPU, whose
    /// buffers have no size limit of their own).
    fn device(opts: &Options) -> Result<(Device, Option<KeyLimits>), Fail> {
        match opts.get("--device").unwrap_or("cpu") {
            "cpu" if opts.flag("--f16") => Err(usage_error("--f16 needs --device wgpu")),
            "cpu" => Ok((Device::flex(), None)),
            "wgpu" => {
                let (device, setup) = Device::wgpu_options()
                    .init_with_setup()
                    .map_err(|e| Fail(format!("no native GPU adapter: {e}"), 1))?;
                watch_gpu_errors(&device, &setup.device)?;
                if opts.flag("--f16") {
                    if !setup.device.features().contains(wgpu::Features::SHADER_F16) {
                        return Err(Fail("--f16: this GPU's device has no shader-f16".into(), 1));
                    }
                    for bits in [8, 4] {
                        set_quantized_matmul(bits, QuantizedMatmul::DequantizeF16);
                    }
                }
                let limits = KeyLimits::from_wgpu(&setup.device.limits());
                Ok((device, Some(limits)))
            }
            other => Err(usage_error(format!("--device {other:?}: use cpu or wgpu"))),
        }
    }

    /// What a `decompose` run's memory plan is made for: the model folder's configs (the text
    /// encoder's only when `text`: it runs), the transformer's and text encoder's precisions, the
    /// run's working size and layer count.
    struct PlanInputs<'a> {
        source: &'a DirSource,
        text: bool,
        precision: Precision,
        text_precision: Precision,
        dims: &'a Dimensions,
        params: &'a DecomposeParams,
    }

    /// The memory plan of a `decompose` run, as the browser makes it (`ModelConfigs::plan`):
    /// on `--device wgpu` always, for the device's `limits` and the budget `--gpu-budget`
    /// (default: the app's, [`default_budget_bytes`]); on the CPU only when `--gpu-budget`,
    /// `--gpu-max-binding` or `--gpu-max-buffer` is given, for buffers of any size and an
    /// unlimited budget unless they say otherwise. `None`: the reference pipeline's run,
    /// everything resident, the VAE whole.
    fn memory_plan(
        opts: &Options,
        limits: Option<&KeyLimits>,
        inputs: PlanInputs<'_>,
        log: &dyn Fn(&str),
    ) -> Result<Option<MemoryPlan>, Fail> {
        let bytes = |name: &str| -> Result<Option<u64>, Fail> {
            opts.get(name)
                .map(|v| {
                    parse_bytes(v).ok_or_else(|| {
                        usage_error(format!(
                            "{name} {v:?} is not a positive byte count (e.g. 65536, 64K, 512M, 3G)"
                        ))
                    })
                })
                .transpose()
        };
        let budget = bytes("--gpu-budget")?;
        let max_binding = bytes("--gpu-max-binding")?;
        let max_buffer = bytes("--gpu-max-buffer")?;
        // Forced limits steer the plan only; above the GPU's own they would fail on the GPU.
        if let Some(limits) = limits {
            for (name, forced, own) in [
                (
                    "--gpu-max-binding",
                    max_binding,
                    limits.max_storage_buffer_binding_size,
                ),
                ("--gpu-max-buffer", max_buffer, limits.max_buffer_size),
            ] {
                if let Some(forced) = forced.filter(|&forced| forced > own) {
                    return Err(usage_error(format!(
                        "{name} {} is over this GPU's own limit of {}: it can only lower it",
                        show_bytes(forced),
                        show_bytes(own)
                    )));
                }
            }
        }
        let (device, default_budget) = match limits {
            Some(limits) => (limits.clone(), default_budget_bytes(limits)),
            None if budget.is_none() && max_binding.is_none() && max_buffer.is_none() => {
                return Ok(None);
            }
            None => {
                let unlimited = KeyLimits {
                    max_buffer_size: u64::MAX,
                    max_storage_buffer_binding_size: u64::MAX,
                    ..KeyLimits::from_wgpu(&wgpu::Limits::default())
                };
                (unlimited, u64::MAX)
            }
        };
        let PlanInputs {
            source,
            text,
            precision,
            text_precision,
            dims,
            params,
        } = inputs;
        let mut configs = pollster::block_on(ModelConfigs::read(source))?;
        if !text {
            configs.text = None;
        }
        let settings = MemorySettings {
            budget_bytes: budget.unwrap_or(default_budget),
            max_binding,
            max_buffer,
            resolution: params.resolution,
            layers: params.layers,
        };
        let budget = settings.budget(&device);
        let size = (dims.width as usize, dims.height as usize);
        let plan = configs.plan(&budget, precision, text_precision, size, params.layers)?;
        let show = |b: u64| match b {
            u64::MAX => "no limit".to_owned(),
            b => show_bytes(b),
        };
        log(&format!(
            "memory plan for a budget of {} and buffers of at most {}: {}",
            show(budget.device_bytes),
            show(budget.limits.largest_buffer()),
            plan.describe(configs.transformer.num_layers)
        ));
        Ok(Some(plan))
    }

    /// Prints the stable part of a growing caption to stderr: everything except trailing
    /// U+FFFD (a multi-byte character still incomplete), from where the last call stopped.
    struct CaptionEcho {
        printed: String,
    }

    impl CaptionEcho {
        fn update(&mut self, text: &str) {
            use std::io::Write;
            let stable = text.trim_end_matches('\u{FFFD}');
            if let Some(rest) = stable.strip_prefix(self.printed.as_str()) {
                eprint!("{rest}");
                let _ = std::io::stderr().flush();
                self.printed = stable.to_owned();
            }
        }
    }

    /// Captions `image` (already the pipeline's resized prompt image) with `captioner`.
    fn run_caption(
        captioner: &Captioner,
        source: &DirSource,
        image: &image::RgbaImage,
        options: &CaptionOptions,
        log: &dyn Fn(&str),
    ) -> Result<String, Fail> {
        log(&format!(
            "captioning {}x{} ({:?} template, at most {} tokens)",
            image.width(),
            image.height(),
            options.language,
            options.max_new_tokens
        ));
        let mut echo = CaptionEcho {
            printed: String::new(),
        };
        let caption = pollster::block_on(captioner.caption_from(source, image, options, |step| {
            echo.update(step.text);
            ControlFlow::Continue(())
        }))?;
        eprintln!();
        log(&format!(
            "caption: {} tokens{}",
            caption.ids.len(),
            if caption
                .ids
                .last()
                .is_some_and(|&t| captioner.generation.is_eos(t))
            {
                " (stopped at end of sequence)"
            } else {
                ""
            }
        ));
        Ok(caption.text)
    }

    fn caption(args: &[String]) -> Result<(), Fail> {
        let opts = Options::parse(
            args,
            &[
                "--model",
                "--image",
                "--max-new-tokens",
                "--resolution",
                "--device",
                "--text-precision",
            ],
            &["--zh", "--as-is", "--gather-embedding"],
            0,
            USAGE,
        )?;
        let model = PathBuf::from(opts.required("--model")?);
        let image_path = PathBuf::from(opts.required("--image")?);
        let options = caption_options(&opts)?;
        let resolution = opts.number("--resolution", DecomposeParams::default().resolution)?;
        let (device, limits) = device(&opts)?;
        let largest_buffer = limits.as_ref().map(KeyLimits::largest_buffer);
        let start = Instant::now();
        let log = |msg: &str| eprintln!("[{:7.2}s] {msg}", start.elapsed().as_secs_f64());

        let image_name = image_path.display().to_string();
        let bytes = std::fs::read(&image_path)
            .map_err(|e| Fail(format!("reading {image_name}: {e}"), 1))?;
        let mut image = decode_image(&image_name, &bytes)?;
        if !opts.flag("--as-is") {
            let dims = Dimensions::for_image_any_bucket(resolution, image.width(), image.height())?;
            image = resize_rgba_lanczos(&image, dims.width, dims.height)?;
        }
        let source = DirSource::new(&model);
        let load = text_load(&opts, largest_buffer)?;
        let captioner = pollster::block_on(Captioner::load_with(&source, &device, load))?;
        log(&format!("loaded the captioner of {}", model.display()));
        let text = run_caption(&captioner, &source, &image, &options, &log)?;
        println!("{text}");
        Ok(())
    }

    /// Writes `tensor` as the only tensor `name` (f32) of the safetensors file `path`.
    fn write_tensor<const D: usize>(
        path: &Path,
        name: &str,
        tensor: Tensor<D>,
        device: &Device,
    ) -> Result<(), Fail> {
        let shape = tensor.dims().to_vec();
        let values = pollster::block_on(read_f32(tensor, name, device))?;
        // Values computed after a GPU error cannot be trusted: no file.
        check_gpu()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape, &bytes)?;
        safetensors::serialize_to_file([(name, view)], None, path)
            .map_err(|e| Fail(format!("writing {}: {e}", path.display()), 1))
    }

    fn encode_prompt(args: &[String]) -> Result<(), Fail> {
        let opts = Options::parse(
            args,
            &[
                "--model",
                "--prompt",
                "--out",
                "--max-sequence-length",
                "--device",
                "--text-precision",
            ],
            &["--gather-embedding"],
            0,
            USAGE,
        )?;
        let model = PathBuf::from(opts.required("--model")?);
        let prompt = opts.required("--prompt")?;
        let out = PathBuf::from(opts.required("--out")?);
        let max_len = opts.number("--max-sequence-length", DEFAULT_MAX_SEQUENCE_LENGTH)?;
        let (device, limits) = device(&opts)?;
        let start = Instant::now();
        let source = DirSource::new(&model);
        let load = text_load(&opts, limits.as_ref().map(KeyLimits::largest_buffer))?;
        let encoder = pollster::block_on(PromptEncoder::load_with(&source, &device, load))?;
        eprintln!(
            "[{:7.2}s] loaded the tokenizer and text encoder of {}",
            start.elapsed().as_secs_f64(),
            model.display()
        );
        if needs_caption(prompt) {
            eprintln!(
                "note: {prompt:?} is encoded as given (e.g. as the negative prompt); as the \
                 prompt of a run, the reference would caption the image instead"
            );
        }
        let ids = encoder.input_ids(prompt)?.len();
        let embeds = pollster::block_on(encoder.encode_from(&source, prompt, max_len))?;
        let [_, l, d] = embeds.dims();
        write_tensor(&out, "prompt_embeds", embeds, &device)?;
        eprintln!(
            "[{:7.2}s] {ids} template tokens -> prompt_embeds [1, {l}, {d}] written to {}",
            start.elapsed().as_secs_f64(),
            out.display()
        );
        Ok(())
    }

    fn decompose(args: &[String]) -> Result<(), Fail> {
        let opts = Options::parse(
            args,
            &[
                "--model",
                "--image",
                "--layers",
                "--steps",
                "--resolution",
                "--true-cfg-scale",
                "--negative-prompt-embeds",
                "--prompt-embeds",
                "--prompt",
                "--negative-prompt",
                "--max-sequence-length",
                "--max-new-tokens",
                "--noise",
                "--seed",
                "--scheduler-config",
                "--out",
                "--device",
                "--precision",
                "--transformer-gguf",
                "--text-precision",
                "--gpu-budget",
                "--gpu-max-binding",
                "--gpu-max-buffer",
                "--gpu-fault",
            ],
            &["--cfg-normalize", "--zh", "--gather-embedding", "--f16"],
            0,
            USAGE,
        )?;
        let defaults = DecomposeParams::default();
        let params = DecomposeParams {
            layers: opts.number("--layers", defaults.layers)?,
            steps: opts.number("--steps", defaults.steps)?,
            resolution: opts.number("--resolution", defaults.resolution)?,
            true_cfg_scale: opts.number("--true-cfg-scale", defaults.true_cfg_scale)?,
            cfg_normalize: opts.flag("--cfg-normalize"),
        };
        let model = PathBuf::from(opts.required("--model")?);
        let image_path = PathBuf::from(opts.required("--image")?);
        let out_dir = PathBuf::from(opts.required("--out")?);
        // No prompt, "" or " " (and no embeddings): the reference captions the image and
        // uses the caption as the prompt.
        let (prompt_text, caption_first) = match (opts.get("--prompt"), opts.get("--prompt-embeds"))
        {
            (Some(_), Some(_)) => {
                return Err(usage_error("give --prompt or --prompt-embeds, not both"));
            }
            (None, None) => (None, true),
            (Some(p), None) if needs_caption(p) => (None, true),
            (p, _) => (p, false),
        };
        let caption_options = caption_options(&opts)?;
        if opts.get("--negative-prompt").is_some() && opts.get("--negative-prompt-embeds").is_some()
        {
            return Err(usage_error(
                "give --negative-prompt or --negative-prompt-embeds, not both",
            ));
        }
        // With a text prompt and CFG asked for, the negative prompt defaults to the official
        // app's " " (the reference pipeline itself runs CFG only with a negative prompt).
        let negative_text = match opts.get("--negative-prompt") {
            Some(n) => Some(n),
            None if (prompt_text.is_some() || caption_first)
                && opts.get("--negative-prompt-embeds").is_none()
                && params.true_cfg_scale > 1.0 =>
            {
                Some(DEFAULT_NEGATIVE_PROMPT)
            }
            None => None,
        };
        let max_len = opts.number("--max-sequence-length", DEFAULT_MAX_SEQUENCE_LENGTH)?;
        let seed = match (opts.get("--noise"), opts.get("--seed")) {
            (Some(_), Some(_)) => return Err(usage_error("give --noise or --seed, not both")),
            (None, None) => return Err(usage_error("--noise or --seed is required")),
            (None, Some(_)) => Some(opts.number("--seed", 0u64)?),
            (Some(_), None) => None,
        };
        let precision: Precision = opts
            .get("--precision")
            .unwrap_or("f32")
            .parse()
            .map_err(usage_error)?;
        let gpu_fault = match opts.get("--gpu-fault") {
            None => false,
            Some("error") if opts.get("--device") == Some("wgpu") => true,
            Some(other) => {
                return Err(usage_error(format!(
                    "--gpu-fault {other:?}: the only fault is \"error\", with --device wgpu"
                )));
            }
        };
        let (device, limits) = device(&opts)?;
        let start = Instant::now();
        let log = |msg: &str| eprintln!("[{:7.2}s] {msg}", start.elapsed().as_secs_f64());

        let image_name = image_path.display().to_string();
        let bytes = std::fs::read(&image_path)
            .map_err(|e| Fail(format!("reading {image_name}: {e}"), 1))?;
        let image = decode_image(&image_name, &bytes)?;
        let dims =
            Dimensions::for_image_any_bucket(params.resolution, image.width(), image.height())?;
        log(&format!(
            "image {image_name}: {}x{} -> working size {}x{}",
            image.width(),
            image.height(),
            dims.width,
            dims.height
        ));

        // The plan (on a GPU, or with forced limits) is made from the configs before any
        // weight is read: a run that cannot fit is refused here.
        let source = DirSource::new(&model);
        let mut text_load = text_load(&opts, None)?;
        let plan = memory_plan(
            &opts,
            limits.as_ref(),
            PlanInputs {
                source: &source,
                text: caption_first || prompt_text.is_some() || negative_text.is_some(),
                precision,
                text_precision: text_load.precision,
                dims: &dims,
                params: &params,
            },
            &log,
        )?;
        // Under a plan the text encoder loads as the page loads it (weights split over the
        // largest buffer, the embedding gathered when it does not fit one); `--gather-embedding`
        // still gathers it in any case.
        if let Some(plan) = &plan {
            let planned = plan.text_encoder_load(text_load.precision);
            text_load.max_part_bytes = planned.max_part_bytes;
            if planned.embedding == EmbeddingMode::Gathered {
                text_load.embedding = EmbeddingMode::Gathered;
            }
        }

        // Caption first (the pipeline's `get_image_caption` of the resized image); the
        // captioner's language model then encodes the prompts.
        let mut caption_lm = None;
        let caption = if caption_first {
            let captioner = pollster::block_on(Captioner::load_with(&source, &device, text_load))?;
            log("no prompt: captioning the image first, as the reference does");
            let resized = resize_rgba_lanczos(&image, dims.width, dims.height)?;
            let text = run_caption(&captioner, &source, &resized, &caption_options, &log)?;
            log(&format!("caption (the prompt from here on): {text:?}"));
            caption_lm = Some(captioner.lm);
            Some(text)
        } else {
            None
        };
        let prompt_text = prompt_text.or(caption.as_deref());

        // Text first, so that the text encoder is freed before the transformer and VAE load.
        let (encoded_prompt, encoded_negative) = if prompt_text.is_some() || negative_text.is_some()
        {
            let encoder = match caption_lm.take() {
                Some(lm) => PromptEncoder::new(
                    pollster::block_on(QwenTokenizer::load(&source, TOKENIZER_FOLDER))?,
                    lm,
                )?,
                None => pollster::block_on(PromptEncoder::load_with(&source, &device, text_load))?,
            };
            let encode = |text: Option<&str>, what: &str| -> Result<Option<Tensor<3>>, Fail> {
                let Some(text) = text else { return Ok(None) };
                let embeds = pollster::block_on(encoder.encode_from(&source, text, max_len))?;
                log(&format!(
                    "{what} {text:?}: prompt_embeds {:?}",
                    embeds.dims()
                ));
                Ok(Some(embeds))
            };
            (
                encode(prompt_text, "prompt")?,
                encode(negative_text, "negative prompt")?,
            )
        } else {
            (None, None)
        };
        // The text encoder (or captioner) is dropped: hand its device memory back before the
        // transformer loads.
        device.memory_cleanup();

        // `DirSource` reads an absolute file name as that path: the GGUF file may be anywhere.
        // Without one, the transformer's stored copy for `--precision` (written by `fetch
        // --precision` or `quantize`) is read when the model folder has it: it stands alone,
        // the checkpoint it was made from may be gone.
        let gguf_file = match opts.get("--transformer-gguf") {
            Some(file) => Some(
                std::path::absolute(file)
                    .map_err(|e| Fail(format!("--transformer-gguf {file}: {e}"), 1))?
                    .display()
                    .to_string(),
            ),
            None => stored_copy_path("transformer", precision)
                .filter(|copy| model.join(copy).is_file())
                .inspect(|copy| {
                    log(&format!(
                        "transformer: read from the stored copy {}/{copy}",
                        model.display()
                    ))
                }),
        };
        let gguf = match gguf_file {
            None => None,
            Some(file) => {
                let config: QwenImageTransformerConfig =
                    pollster::block_on(read_json(&source, "transformer/config.json"))?;
                Some((file, config))
            }
        };
        let mut planned = match (&plan, &gguf) {
            (Some(plan), None) => {
                pollster::block_on(PlannedPipeline::load(&source, &device, plan, precision))?
            }
            (Some(plan), Some((file, config))) => pollster::block_on(PlannedPipeline::load_gguf(
                &source, &device, plan, precision, file, config,
            ))?,
            (None, None) => PlannedPipeline {
                pipeline: pollster::block_on(LayeredPipeline::load_precision(
                    &source, &device, precision,
                ))?,
                stream: None,
            },
            (None, Some((file, config))) => {
                let transformer = pollster::block_on(QwenImageTransformer2DModel::load_gguf(
                    &source, file, config, &device, precision,
                ))?;
                PlannedPipeline {
                    pipeline: pollster::block_on(LayeredPipeline::load_with_transformer(
                        &source,
                        transformer,
                        &device,
                    ))?,
                    stream: None,
                }
            }
        };
        if let Some(file) = opts.get("--scheduler-config") {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Fail(format!("reading {file}: {e}"), 1))?;
            planned.pipeline.scheduler_config = FlowMatchEulerDiscreteConfig::from_json_str(&text)
                .map_err(|e| Fail(format!("scheduler config {file}: {e}"), 1))?;
        }
        log(&format!("loaded model {}", model.display()));

        let joint_dim = planned.pipeline.transformer.config.joint_attention_dim;
        let text_dim = Some(joint_dim);
        let fits = |t: &Tensor<3>| -> Result<(), Fail> {
            match t.dims()[2] == joint_dim {
                true => Ok(()),
                false => Err(Fail(
                    format!(
                        "the text encoder gives width {}, the transformer's joint_attention_dim is {joint_dim}",
                        t.dims()[2]
                    ),
                    1,
                )),
            }
        };
        let prompt_embeds = match (encoded_prompt, opts.get("--prompt-embeds")) {
            (Some(t), _) => {
                fits(&t)?;
                t
            }
            (None, Some(p)) => read_tensor3(
                "--prompt-embeds",
                Path::new(p),
                [Some(1), None, text_dim],
                &device,
            )?,
            (None, None) => unreachable!("checked above: --prompt or --prompt-embeds"),
        };
        let negative = match (encoded_negative, opts.get("--negative-prompt-embeds")) {
            (Some(t), _) => {
                fits(&t)?;
                Some(t)
            }
            (None, Some(p)) => Some(read_tensor3(
                "--negative-prompt-embeds",
                Path::new(p),
                [Some(1), None, text_dim],
                &device,
            )?),
            (None, None) => None,
        };
        if negative.is_none() && params.true_cfg_scale > 1.0 {
            log("no negative prompt: classifier-free guidance is off (as the reference)");
        }
        let noise = match (seed, opts.get("--noise")) {
            (Some(seed), _) => Noise::Seed(seed),
            (None, Some(p)) => {
                let want = [
                    Some(1),
                    Some(dims.noise_seq_len(params.layers)),
                    Some(planned.pipeline.transformer.config.in_channels),
                ];
                Noise::Packed(read_tensor3("--noise", Path::new(p), want, &device)?)
            }
            (None, None) => unreachable!("checked above: --noise or --seed"),
        };

        let embeds = PromptEmbeds {
            prompt: prompt_embeds,
            negative,
        };
        let out = pollster::block_on(planned.run(&image, &params, embeds, noise, |p| {
            match p {
                Progress::Prepared {
                    width,
                    height,
                    layers,
                    steps,
                    cfg,
                } => log(&format!(
                    "{layers} layers at {width}x{height}, {steps} steps, CFG {}",
                    if cfg { "on" } else { "off" }
                )),
                Progress::Encoded => log("image encoded"),
                Progress::Step {
                    step,
                    steps,
                    timestep,
                } => {
                    log(&format!("step {}/{steps} (t = {timestep:.3})", step + 1));
                    if gpu_fault && step == 0 {
                        cause_gpu_fault();
                    }
                }
                Progress::Decoding => log("decoding layers"),
                Progress::Done => log("done"),
            }
            // A GPU error makes the rest of the run garbage: stop at the next report.
            match gpu_failed() {
                true => ControlFlow::Break(()),
                false => ControlFlow::Continue(()),
            }
        }))?;
        check_gpu()?;

        std::fs::create_dir_all(&out_dir)
            .map_err(|e| Fail(format!("creating {}: {e}", out_dir.display()), 1))?;
        for (k, layer) in out.layers.iter().enumerate() {
            let path = out_dir.join(format!("layer_{k}.png"));
            layer
                .save_with_format(&path, image::ImageFormat::Png)
                .map_err(|e| Fail(format!("writing {}: {e}", path.display()), 1))?;
        }
        write_tensor(
            &out_dir.join("latents.safetensors"),
            "latents",
            out.latents,
            &device,
        )?;
        log(&format!(
            "wrote {} layers (layer_0.png = bottom) and latents.safetensors to {}",
            out.layers.len(),
            out_dir.display()
        ));
        Ok(())
    }

    fn print_folder(label: &str, folder: &SafetensorsFolder) {
        println!(
            "{label}: {} tensors, {} values, files {:?}",
            folder.len(),
            folder.value_count(),
            folder.files()
        );
        for key in folder.keys() {
            if let Some(e) = folder.get(key) {
                println!("  {key}\t{:?}\t{:?}", e.dtype, e.shape);
            }
        }
    }

    fn print_gguf(label: &str, g: &GgufFile) {
        let values: usize = g.tensors().iter().map(|t| t.numel()).sum();
        let bytes: u64 = g.tensors().iter().map(|t| t.len).sum();
        println!(
            "{label}: GGUF v{}, {} tensors, {values} values, {bytes} bytes of data at offset {} \
             (alignment {}), {} metadata entries",
            g.version(),
            g.tensors().len(),
            g.data_offset(),
            g.alignment(),
            g.metadata().len()
        );
        for (key, value) in g.metadata() {
            println!("  meta {key} = {value}");
        }
        for t in g.tensors() {
            println!(
                "  {}\t{}\t{:?}\t{} bytes",
                t.name,
                t.ggml_type.name(),
                t.shape,
                t.len
            );
        }
    }

    /// Prints the first `k` values of tensor `name` of the file or model folder at `path`,
    /// dequantized to f32, row-major in PyTorch order, one per line.
    fn print_values(path: &Path, name: &str, k: usize) -> Result<(), Fail> {
        let values = if is_gguf(path) {
            let (source, file) = file_source(path);
            let g = pollster::block_on(GgufFile::open(&source, &file))?;
            pollster::block_on(g.read_f32(&source, name))?
        } else {
            let (source, folder) = if path.is_dir() {
                let source = DirSource::new(path);
                let folder = pollster::block_on(SafetensorsFolder::open(&source, ""))?;
                (source, folder)
            } else {
                let (source, file) = file_source(path);
                let folder = if file.ends_with(".index.json") {
                    pollster::block_on(SafetensorsFolder::open_index(&source, "", &file))?
                } else {
                    pollster::block_on(SafetensorsFolder::open_files(&source, "", &[file]))?
                };
                (source, folder)
            };
            let e = folder.get(name).ok_or_else(|| {
                Fail(
                    format!(
                        "{}: no tensor {name:?} ({} tensors)",
                        path.display(),
                        folder.len()
                    ),
                    1,
                )
            })?;
            let bytes = pollster::block_on(source.read(&e.file, e.offset, e.len))?;
            to_f32(&bytes, e.dtype, name, &e.file)?
        };
        for v in values.iter().take(k) {
            println!("{v}");
        }
        Ok(())
    }

    /// A `.gguf` file (by extension or magic).
    fn is_gguf(path: &Path) -> bool {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return path.is_file();
        }
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && &magic == b"GGUF"
    }

    /// A source over the folder of `path`, and the file name in it.
    fn file_source(path: &Path) -> (DirSource, String) {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (
            DirSource::new(path.parent().unwrap_or(Path::new("."))),
            file,
        )
    }

    fn inspect(args: &[String]) -> Result<(), Fail> {
        let Some((path, rest)) = args.split_first() else {
            return Err(usage_error("inspect takes a PATH"));
        };
        let opts = Options::parse(rest, &["--tensor", "--values"], &[], 0, USAGE)?;
        let path = Path::new(path);
        if let Some(tensor) = opts.get("--tensor") {
            let k = opts.number("--values", 10usize)?;
            return print_values(path, tensor, k);
        }
        if opts.get("--values").is_some() {
            return Err(usage_error("--values needs --tensor NAME"));
        }
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        if path.is_file() && is_gguf(path) {
            let (source, file) = file_source(path);
            let g = pollster::block_on(GgufFile::open(&source, &file))?;
            print_gguf(&path.display().to_string(), &g);
            return Ok(());
        }
        if path.is_file() {
            let source = DirSource::new(path.parent().unwrap_or(Path::new(".")));
            let file = name(path);
            let folder = if file.ends_with(".index.json") {
                pollster::block_on(SafetensorsFolder::open_index(&source, "", &file))?
            } else {
                pollster::block_on(SafetensorsFolder::open_files(&source, "", &[file]))?
            };
            print_folder(&path.display().to_string(), &folder);
            return Ok(());
        }
        if !path.is_dir() {
            return Err(Fail(
                format!("{}: no such file or folder", path.display()),
                1,
            ));
        }
        let source = DirSource::new(path);
        // A model folder (weights at its root), or a pipeline folder (weights in subfolders).
        if let Ok(folder) = pollster::block_on(SafetensorsFolder::open(&source, "")) {
            print_folder(&path.display().to_string(), &folder);
            return Ok(());
        }
        let mut subs: Vec<String> = std::fs::read_dir(path)
            .map_err(|e| Fail(format!("{}: {e}", path.display()), 1))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| name(&e.path()))
            .collect();
        subs.sort();
        let mut found = 0;
        for sub in subs {
            let has_weights = pollster::block_on(async {
                for stem in ["diffusion_pytorch_model", "model"] {
                    for ext in ["safetensors", "safetensors.index.json"] {
                        if source.exists(&format!("{sub}/{stem}.{ext}")).await? {
                            return Ok::<bool, qwen_layered_web::Error>(true);
                        }
                    }
                }
                Ok(false)
            })?;
            if has_weights {
                let folder = pollster::block_on(SafetensorsFolder::open(&source, &sub))?;
                print_folder(&format!("{}/{sub}", path.display()), &folder);
                found += 1;
            }
        }
        if found == 0 {
            return Err(Fail(
                format!(
                    "{}: no safetensors weights in the folder or its subfolders",
                    path.display()
                ),
                1,
            ));
        }
        Ok(())
    }

    /// `quantize`: the transformer's stored quantized copy, written to `OUT.part` and renamed
    /// to `OUT` only once complete.
    fn quantize(args: &[String]) -> Result<(), Fail> {
        use std::io::Write;
        let opts = Options::parse(
            args,
            &["--model", "--precision", "--out", "--component"],
            &[],
            0,
            USAGE,
        )?;
        let model = PathBuf::from(opts.required("--model")?);
        let precision: Precision = opts.required("--precision")?.parse().map_err(usage_error)?;
        let component = opts.get("--component").unwrap_or("transformer");
        let Some(beside) = stored_copy_path(component, precision) else {
            return Err(usage_error("--precision must be q8 or q4"));
        };
        let source = DirSource::new(&model);
        let origin = model.display().to_string();
        let out = match component {
            "transformer" => PathBuf::from(opts.required("--out")?),
            "text_encoder" => {
                if opts.get("--out").is_some() {
                    return Err(usage_error(
                        "--out: the text encoder's copy is found beside its checkpoint, at \
                         text_encoder/qwen-layered-v…-q4_0.gguf (or q8_0) in the model folder",
                    ));
                }
                model.join(&beside)
            }
            other => {
                return Err(usage_error(format!(
                    "--component {other:?}: transformer or text_encoder"
                )));
            }
        };
        let folder = pollster::block_on(SafetensorsFolder::open(&source, component))?;
        let layout = stored_copy_layout(component, &folder, precision, &origin)?;
        let (tensors, quantized) = layout.counts();
        eprintln!(
            "{component}: {tensors} tensors, {quantized} linear weights to {precision:?}; \
             {} stored → {}",
            show_bytes(layout.source_bytes()),
            show_bytes(layout.size())
        );
        let part = PathBuf::from(format!("{}.part", out.display()));
        let io = |e: std::io::Error, p: &Path| Fail(format!("{}: {e}", p.display()), 1);
        let file = std::fs::File::create(&part).map_err(|e| io(e, &part))?;
        let mut writer = std::io::BufWriter::with_capacity(8 << 20, file);
        let start = Instant::now();
        let mut last = Instant::now();
        let result = pollster::block_on(qwen_layered_web::weights::write_quantized(
            &source,
            &layout,
            None,
            async |bytes: &[u8]| {
                writer
                    .write_all(bytes)
                    .map_err(|e| qwen_layered_web::Error::Source {
                        file: part.display().to_string(),
                        reason: e.to_string(),
                    })
            },
            |done, total| {
                if last.elapsed().as_secs_f64() >= 1.0 || done == total {
                    last = Instant::now();
                    eprintln!("  {} of {}", show_bytes(done), show_bytes(total));
                }
            },
        ))
        .and_then(|hash| {
            writer
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .map_err(|e| qwen_layered_web::Error::Source {
                    file: part.display().to_string(),
                    reason: e.to_string(),
                })?;
            Ok(hash)
        });
        let hash = match result {
            Ok(hash) => hash,
            Err(err) => {
                let _ = std::fs::remove_file(&part);
                return Err(err.into());
            }
        };
        std::fs::rename(&part, &out).map_err(|e| io(e, &out))?;
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!(
            "wrote {} ({}) in {:.1} s, sha256 {hex}",
            out.display(),
            show_bytes(layout.size()),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn fetch(args: &[String]) -> Result<(), Fail> {
        use qwen_layered_web::download::derived::{CopyJob, copying_peak, is_checkpoint_of};
        use qwen_layered_web::download::native::{DirStore, UreqClient};
        use qwen_layered_web::download::{
            Check, DownloadOptions, DownloadPlan, HubSource, Progress, Session, SourceSpec,
            discover, download_plan, remaining_bytes,
        };
        use qwen_layered_web::registry::Part;

        let Some((repo, rest)) = args.split_first().filter(|(r, _)| !r.starts_with("--")) else {
            return Err(usage_error("fetch needs a REPO (owner/name)"));
        };
        let opts = Options::parse(
            rest,
            &[
                "--revision",
                "--base-url",
                "--dir",
                "--components",
                "--chunk-mib",
                "--precision",
                "--text-precision",
                "--files",
            ],
            &["--dry-run"],
            0,
            USAGE,
        )?;
        let mut spec = SourceSpec::new(repo.clone());
        if let Some(r) = opts.get("--revision") {
            spec.revision = r.to_owned();
        }
        if let Some(u) = opts
            .get("--base-url")
            .map(str::to_owned)
            .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|v| !v.is_empty()))
        {
            spec.base_url = u;
        }
        if let Some(c) = opts.get("--components") {
            spec.components = c
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        // The components to keep 8-/4-bit (the text encoder first, as the page does).
        let mut kept = Vec::new();
        for (component, flag) in [
            ("text_encoder", "--text-precision"),
            ("transformer", "--precision"),
        ] {
            let precision: Precision = match opts.get(flag) {
                None => continue,
                Some(p) => p.parse().map_err(usage_error)?,
            };
            if precision == Precision::F32 {
                continue; // the checkpoint as it is
            }
            if !spec.components.is_empty() && !spec.components.iter().any(|c| c == component) {
                return Err(usage_error(format!(
                    "{flag}: --components leaves out the {component}"
                )));
            }
            kept.push((component, precision));
        }
        let dir = match opts.get("--dir") {
            Some(d) => PathBuf::from(d),
            None => default_cache_dir()?,
        };
        let chunk_mib: u64 = opts.number("--chunk-mib", 32)?;
        if chunk_mib == 0 {
            return Err(usage_error("--chunk-mib must be at least 1"));
        }
        let options = DownloadOptions {
            chunk_bytes: chunk_mib << 20,
            // ureq is blocking: files go one after the other.
            parallel_files: 1,
            ..DownloadOptions::default()
        };
        let client = UreqClient::new();
        let store = DirStore::new(&dir);
        let mut plan = pollster::block_on(discover(&client, &spec, &options))?;
        if let Some(list) = opts.get("--files") {
            // As a registry entry picks files: each pattern must match one at least.
            let part = Part {
                spec: spec.clone(),
                patterns: (list.split(',').filter(|p| !p.is_empty()))
                    .map(|p| ("--files".to_owned(), p.to_owned()))
                    .collect(),
                gguf: None,
            };
            plan = part.select(plan).map_err(|e| Fail(e, 1))?;
        }
        let model_dir = store.model_dir(&plan);
        let origin = format!("{}@{}", plan.repo, plan.revision);
        eprintln!(
            "{origin}: {} files, {:.3} GB",
            plan.files.len(),
            plan.total_bytes() as f64 / 1e9
        );
        for (component, files, bytes) in plan.components() {
            let name = if component.is_empty() {
                "(root)"
            } else {
                &component
            };
            eprintln!(
                "  {name:<14} {files:>4} files {:>10.3} GB",
                bytes as f64 / 1e9
            );
        }

        // Each component kept 8-/4-bit is quantized shard by shard as its checkpoint arrives,
        // into its stored copy; a shard goes once the copy holds it.
        let mut jobs = Vec::new();
        for (component, precision) in kept {
            let bits = precision.bits().unwrap_or(32);
            let path = stored_copy_path(component, precision).expect("8-/4-bit");
            if model_dir.join(&path).is_file() {
                eprintln!(
                    "{component}: its {bits}-bit copy {path} is there; its checkpoint is not fetched"
                );
                plan.files.retain(|f| !is_checkpoint_of(component, f));
                continue;
            }
            if !plan.files.iter().any(|f| is_checkpoint_of(component, f)) {
                return Err(Fail(
                    format!(
                        "{component}: {origin} has no {component}/*.safetensors checkpoint to keep {bits}-bit"
                    ),
                    1,
                ));
            }
            // Planned from the checkpoint's headers, read from the hub by range requests.
            let hub = HubSource::new(&client, &plan, options.clone());
            let folder = pollster::block_on(SafetensorsFolder::open(&hub, component))?;
            let layout = stored_copy_layout(component, &folder, precision, &origin)?;
            let plans = std::slice::from_ref(&plan);
            let job =
                pollster::block_on(CopyJob::new(&store, plans, 0, component, path, layout))?
                    .map_err(|why| {
                        Fail(
                            format!("{component}: its {bits}-bit copy cannot be made as the checkpoint arrives ({why})"),
                            1,
                        )
                    })?;
            let checkpoint: u64 = plan
                .files
                .iter()
                .filter(|f| job.is_shard(f))
                .map(|f| f.size)
                .sum();
            eprintln!(
                "{component}: kept {bits}-bit as {} ({}), quantized shard by shard as its \
                 checkpoint ({}) arrives; each shard is removed once the copy holds it{}",
                job.path,
                show_bytes(job.layout.size()),
                show_bytes(checkpoint),
                if job.partial > 0 {
                    format!("; going on from byte {} of the copy", job.partial)
                } else {
                    String::new()
                }
            );
            jobs.push(job);
        }
        // Shards a partial copy holds are gone: not fetched again.
        plan.files
            .retain(|f| !jobs.iter().any(|j| j.consumed(&f.path)));

        // Refused up front when the disk cannot hold the peak.
        let needed = pollster::block_on(copying_peak(&store, std::slice::from_ref(&plan), &jobs))?;
        let free = check_disk(&dir, needed, !jobs.is_empty())?;
        if opts.flag("--dry-run") {
            let missing = pollster::block_on(remaining_bytes(&store, &plan))?;
            eprintln!(
                "dry run: {} ({missing} bytes) to fetch; {} ({needed} bytes) more on the disk at \
                 the peak, {} free there; nothing fetched",
                show_bytes(missing),
                show_bytes(needed),
                free.map_or_else(|| "unknown".to_owned(), show_bytes)
            );
            println!("{}", model_dir.display());
            return Ok(());
        }

        let last = std::cell::Cell::new(0.0f64);
        let start = Instant::now();
        let on_progress = |p: &Progress| {
            let now = start.elapsed().as_secs_f64();
            if now - last.get() >= 1.0 || p.done_bytes == p.total_bytes {
                last.set(now);
                let eta = p
                    .eta_s
                    .map(|s| format!("{s:.0} s"))
                    .unwrap_or_else(|| "?".into());
                eprintln!(
                    "  {:5.1}%  {:.3}/{:.3} GB  {} of {} files  {:.1} MB/s  ETA {eta}",
                    p.fraction() * 100.0,
                    p.done_bytes as f64 / 1e9,
                    p.total_bytes as f64 / 1e9,
                    p.files_done,
                    p.files_total,
                    p.rate_bytes_per_s / 1e6
                );
            }
        };
        let never = || false;
        let session = Session::new(&plan, options, &on_progress, &never);
        let others = DownloadPlan {
            files: (plan.files.iter())
                .filter(|f| !jobs.iter().any(|j| j.is_shard(f)))
                .cloned()
                .collect(),
            ..plan.clone()
        };
        let mut fetched = 0;
        // The copies first, as the page makes them: the peak `copying_peak` counts.
        let cached = DirSource::new(&model_dir);
        for job in &jobs {
            let copy_last = std::cell::Cell::new(0.0f64);
            let on_copy = |written: u64, size: u64| {
                let now = start.elapsed().as_secs_f64();
                if now - copy_last.get() >= 1.0 || written == size {
                    copy_last.set(now);
                    eprintln!(
                        "  {}: {} of {} of its copy written",
                        job.component,
                        show_bytes(written),
                        show_bytes(size)
                    );
                }
            };
            let (stored, bytes) =
                pollster::block_on(job.run(&client, &store, &plan, &cached, &session, on_copy))?;
            fetched += bytes;
            let hash = match &stored.file.check {
                Check::Sha256(h) => format!("sha256 {h}"),
                Check::GitBlobSha1(h) => format!("git blob sha1 {h}"),
            };
            eprintln!(
                "{}: {} written ({}), {hash}",
                job.component,
                stored.file.path,
                show_bytes(stored.file.size)
            );
        }
        let report = pollster::block_on(download_plan(&client, &store, &others, &session))?;
        fetched += report.files.iter().map(|f| f.bytes_fetched).sum::<u64>();
        let resumed = report.files.iter().filter(|f| f.resumed_from > 0).count();
        let present = report.files.iter().filter(|f| f.already_present).count();
        eprintln!(
            "done in {:.1} s: {fetched} bytes fetched, {resumed} files resumed, {present} already present, all verified",
            start.elapsed().as_secs_f64()
        );
        println!("{}", model_dir.display());
        Ok(())
    }

    /// Refuses a fetch into `dir` that needs `needed` bytes more on its disk (5 % margin) than
    /// the disk has free, with the numbers; else the free bytes counted on (`None`: unknown).
    /// `QWEN_LAYERED_DISK_FREE` (bytes, `64K`, `3G`) caps the free space counted on, for tests.
    fn check_disk(dir: &Path, needed: u64, copies: bool) -> Result<Option<u64>, Fail> {
        let capped = std::env::var("QWEN_LAYERED_DISK_FREE")
            .ok()
            .map(|v| {
                parse_bytes(&v).ok_or_else(|| {
                    usage_error(format!(
                        "QWEN_LAYERED_DISK_FREE {v:?} is not a byte count (e.g. 64K, 3G)"
                    ))
                })
            })
            .transpose()?;
        let Some(free) = disk_free(dir).into_iter().chain(capped).min() else {
            return Ok(None); // unknown: the writes say so if it runs out
        };
        if needed.saturating_add(needed / 20) <= free {
            return Ok(Some(free));
        }
        let what = if copies {
            "at the peak: the stored copies and one checkpoint shard at a time, then the other \
             files"
        } else {
            "for the files still missing"
        };
        Err(Fail(
            format!(
                "{} ({needed} bytes) more are needed on the disk of {} ({what}), {} ({free} \
                 bytes) are free there: free {} or give --dir on another disk",
                show_bytes(needed),
                dir.display(),
                show_bytes(free),
                show_bytes(needed.saturating_add(needed / 20) - free)
            ),
            1,
        ))
    }

    /// Bytes free for this user on the file system of `dir` (or of its nearest existing
    /// parent), if the system says.
    #[cfg(unix)]
    fn disk_free(dir: &Path) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::path::absolute(dir).ok()?;
        let existing = dir.ancestors().find(|d| d.exists())?;
        let path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs is plain old data, and all-zero bytes are a valid value of it.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a NUL-terminated string and `stat` a writable statvfs.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        // (The field types' widths differ from one system to another.)
        #[allow(clippy::unnecessary_cast)]
        let (blocks, block_size) = (stat.f_bavail as u64, stat.f_frsize as u64);
        (rc == 0).then(|| blocks.saturating_mul(block_size))
    }

    #[cfg(not(unix))]
    fn disk_free(_dir: &Path) -> Option<u64> {
        None
    }

    fn default_cache_dir() -> Result<PathBuf, Fail> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(d) = env("QWEN_LAYERED_CACHE") {
            return Ok(d);
        }
        if let Some(d) = env("XDG_CACHE_HOME") {
            return Ok(d.join("qwen-layered"));
        }
        env("HOME")
            .map(|h| h.join(".cache").join("qwen-layered"))
            .ok_or_else(|| {
                usage_error("no --dir given and neither QWEN_LAYERED_CACHE nor HOME is set")
            })
    }
}
