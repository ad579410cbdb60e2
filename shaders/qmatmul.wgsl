// Quantized matmul: y[M, N] = x[M, K] · dequant(W)[N, K]ᵀ (+ bias[N]), f32 accumulation.
//
// W is blockwise-quantized along K (crate::weights::QuantizedMatrix): one f16 scale (held as
// f32) per 32 consecutive values of a row; value = scale · (code − 2^(BITS−1)); the codes of a
// row are packed into u32 words, first code in the lowest bits. Dequantization happens here,
// while a tile of W is staged in workgroup memory; the dequantized matrix never exists.
//
// Prepended by the launcher (src/kernels/qmatmul.rs):
//   const BITS: u32      8 or 4
//   const HAS_BIAS: u32  1 to add bias[n], 0 when the layer has none (binding 3 is then a
//                        one-element buffer that is never read)
//
// Bindings (group 0), every buffer contiguous row-major. All are declared read_write, inputs
// too: cubecl suballocates tensors from shared wgpu buffers, and wgpu rejects one buffer bound
// both read-only and read-write in a dispatch (see src/kernels/launch.rs).
//   0 x:      array<f32>  [M, K]
//   1 words:  array<u32>  [N, K·BITS/32]   (i32 bit patterns on the Burn side)
//   2 scales: array<f32>  [N, K/32]
//   3 bias:   array<f32>  [N] (or [1], unread, without a bias)
//   4 y:      array<f32>  [M, N]           (output)
//   5 params: array<u32>  [3] = (M, N, K), K a multiple of 32
//
// Grid: (ceil(N/64), ceil(M/64), 1) workgroups of 16×16 invocations. Each workgroup computes a
// 64×64 tile of y; each invocation a 4×4 sub-tile with rows ty + 16·i and columns tx + 16·j.
// Workgroup memory: two 32×64 f32 tiles = 16 KiB (WebGPU's default limit).

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> words: array<u32>;
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;
@group(0) @binding(3) var<storage, read_write> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> params: array<u32>;

const TM: u32 = 64u;   // rows of y per workgroup
const TN: u32 = 64u;   // columns of y per workgroup
const TK: u32 = 32u;   // K per step = one quantization block
const THREADS: u32 = 256u;

// a_tile[k * TM + m] = x[m0 + m, k0 + k]; b_tile[k * TN + n] = W[n0 + n, k0 + k] (dequantized).
var<workgroup> a_tile: array<f32, 2048>;
var<workgroup> b_tile: array<f32, 2048>;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let M = params[0];
    let N = params[1];
    // K bounds the loop that holds the barriers, so it must be workgroup-uniform: broadcast it
    // through workgroup memory (a_tile[0] is free until the first tile is staged).
    if (t == 0u) {
        a_tile[0] = bitcast<f32>(params[2]);
    }
    let K = bitcast<u32>(workgroupUniformLoad(&a_tile[0]));
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    let tx = lid.x;
    let ty = lid.y;

    let blocks = K / TK;                  // scales per row
    let row_words = blocks * BITS;        // u32 words per row of W
    let per_word = 32u / BITS;            // codes per word
    let mask = (1u << BITS) - 1u;
    let offset = f32(1u << (BITS - 1u));

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }

    for (var kb = 0u; kb < blocks; kb++) {
        let k0 = kb * TK;

        // x tile: 64 rows × 32 k, 8 values per invocation, consecutive invocations along k.
        for (var r = 0u; r < (TM * TK) / THREADS; r++) {
            let e = t + r * THREADS;
            let m = e / TK;
            let k = e % TK;
            let gm = m0 + m;
            var v = 0.0;
            if (gm < M) {
                v = x[gm * K + k0 + k];
            }
            a_tile[k * TM + m] = v;
        }

        // W tile: 64 rows × BITS words (32 codes), consecutive invocations along a row's words.
        for (var r = 0u; r < (TN * BITS) / THREADS; r++) {
            let w = t + r * THREADS;
            let n = w / BITS;
            let wi = w % BITS;
            let gn = n0 + n;
            var word = 0u;
            var scale = 0.0;
            if (gn < N) {
                word = words[gn * row_words + kb * BITS + wi];
                scale = scales[gn * blocks + kb];
            }
            for (var c = 0u; c < per_word; c++) {
                let code = (word >> (c * BITS)) & mask;
                b_tile[(wi * per_word + c) * TN + n] = scale * (f32(code) - offset);
            }
        }

        workgroupBarrier();

        for (var k = 0u; k < TK; k++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = a_tile[k * TM + ty + 16u * i];
                b[i] = b_tile[k * TN + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(a[i], b[j], acc[i][j]);
                }
            }
        }

        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let gm = m0 + ty + 16u * i;
        if (gm < M) {
            for (var j = 0u; j < 4u; j++) {
                let gn = n0 + tx + 16u * j;
                if (gn < N) {
                    var v = acc[i][j];
                    if (HAS_BIAS == 1u) {
                        v += bias[gn];
                    }
                    y[gm * N + gn] = v;
                }
            }
        }
    }
}
