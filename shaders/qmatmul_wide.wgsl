// Quantized matmul, wide tiles: y[M, N] = x[M, K] · dequant(W)[N, K]ᵀ (+ bias[N]), f32
// accumulation. Same contract and weight layout as qmatmul.wgsl (see there); this variant
// trades parallelism for arithmetic intensity, for long sequences (the image side, M ≈ 10k):
//
// - each workgroup computes a 128×128 tile of y (qmatmul.wgsl: 64×64), each invocation an 8×8
//   sub-tile (there 4×4), so every value read from workgroup memory feeds 2× more FMAs;
// - workgroup memory holds 16 values of K per step (half a quantization block), as vec4s of
//   four consecutive rows / columns: two 16×128 f32 tiles = 16 KiB (WebGPU's default limit);
// - x is read as vec4 along K (K is a multiple of 32).
//
// Prepended by the launcher (src/kernels/qmatmul.rs):
//   const BITS: u32      8 or 4
//   const HAS_BIAS: u32  1 to add bias[n], 0 when the layer has none
//
// Bindings (group 0), every buffer contiguous row-major, all read_write (see qmatmul.wgsl):
//   0 x:      array<vec4<f32>> [M, K/4]
//   1 words:  array<u32>       [N, K·BITS/32]
//   2 scales: array<f32>       [N, K/32]
//   3 bias:   array<f32>       [N] (or [1], unread, without a bias)
//   4 y:      array<f32>       [M, N]  (output)
//   5 params: array<u32>       [3] = (M, N, K), K a multiple of 32
//
// Grid: (ceil(N/128), ceil(M/128), 1) workgroups of 16×16 invocations. Invocation (tx, ty)
// computes rows 4·ty + {0..3} and 64 + 4·ty + {0..3}, columns 4·tx + {0..3} and
// 64 + 4·tx + {0..3} of its tile.

@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> words: array<u32>;
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;
@group(0) @binding(3) var<storage, read_write> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> params: array<u32>;

const TM: u32 = 128u;  // rows of y per workgroup
const TN: u32 = 128u;  // columns of y per workgroup
const TK: u32 = 16u;   // K per step
const THREADS: u32 = 256u;
const WPS: u32 = BITS / 2u; // code words per row per step (16 codes)

// a_tile[k * 32 + q] = x[m0 + 4q + (0..3), k0 + k]; b_tile[k * 32 + q] = W[n0 + 4q + (0..3),
// k0 + k] (dequantized).
var<workgroup> a_tile: array<vec4<f32>, 512>;
var<workgroup> b_tile: array<vec4<f32>, 512>;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let M = params[0];
    let N = params[1];
    // K bounds the loop that holds the barriers, so it must be workgroup-uniform: broadcast it
    // through workgroup memory (a_tile is free until the first tile is staged).
    if (t == 0u) {
        a_tile[0] = vec4<f32>(bitcast<f32>(params[2]), 0.0, 0.0, 0.0);
    }
    let K = bitcast<u32>(workgroupUniformLoad(&a_tile[0]).x);
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    let tx = lid.x;
    let ty = lid.y;

    let blocks = K / 32u;                 // scales per row
    let row_words = blocks * BITS;        // u32 words per row of W
    let k4 = K / 4u;                      // vec4s per row of x
    let per_word = 32u / BITS;            // codes per word
    let mask = (1u << BITS) - 1u;
    let offset = f32(1u << (BITS - 1u));

    var acc: array<vec4<f32>, 16>;        // acc[2·r + h]: row r (0..7), column half h
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    let steps = K / TK;
    for (var s = 0u; s < steps; s++) {
        let k0 = s * TK;

        // x tile: 128 rows × 4 vec4 along k, 2 per invocation, consecutive invocations along k.
        for (var r = 0u; r < (TM * TK / 4u) / THREADS; r++) {
            let e = t + r * THREADS;
            let m = e / 4u;
            let kq = e % 4u;
            let gm = m0 + m;
            var v = vec4<f32>(0.0);
            if (gm < M) {
                v = x[gm * k4 + k0 / 4u + kq];
            }
            let q = m / 4u;
            let c = m % 4u;
            a_tile[(4u * kq) * 32u + q][c] = v.x;
            a_tile[(4u * kq + 1u) * 32u + q][c] = v.y;
            a_tile[(4u * kq + 2u) * 32u + q][c] = v.z;
            a_tile[(4u * kq + 3u) * 32u + q][c] = v.w;
        }

        // W tile: 128 rows × WPS words (16 codes), consecutive invocations along a row's words.
        for (var r = 0u; r < (TN * WPS) / THREADS; r++) {
            let w = t + r * THREADS;
            let n = w / WPS;
            let wi = w % WPS;
            let gn = n0 + n;
            var word = 0u;
            var scale = 0.0;
            if (gn < N) {
                word = words[gn * row_words + s * WPS + wi];
                scale = scales[gn * blocks + k0 / 32u];
            }
            let q = n / 4u;
            let c = n % 4u;
            for (var j = 0u; j < per_word; j++) {
                let code = (word >> (j * BITS)) & mask;
                b_tile[(wi * per_word + j) * 32u + q][c] = scale * (f32(code) - offset);
            }
        }

        workgroupBarrier();

        for (var k = 0u; k < TK; k++) {
            let a0 = a_tile[k * 32u + ty];
            let a1 = a_tile[k * 32u + 16u + ty];
            let b0 = b_tile[k * 32u + tx];
            let b1 = b_tile[k * 32u + 16u + tx];
            for (var i = 0u; i < 4u; i++) {
                acc[2u * i] = fma(vec4<f32>(a0[i]), b0, acc[2u * i]);
                acc[2u * i + 1u] = fma(vec4<f32>(a0[i]), b1, acc[2u * i + 1u]);
                acc[8u + 2u * i] = fma(vec4<f32>(a1[i]), b0, acc[8u + 2u * i]);
                acc[8u + 2u * i + 1u] = fma(vec4<f32>(a1[i]), b1, acc[8u + 2u * i + 1u]);
            }
        }

        workgroupBarrier();
    }

    for (var r = 0u; r < 8u; r++) {
        let gm = m0 + (r / 4u) * 64u + 4u * ty + r % 4u;
        if (gm < M) {
            for (var h = 0u; h < 2u; h++) {
                let v = acc[2u * r + h];
                for (var j = 0u; j < 4u; j++) {
                    let gn = n0 + h * 64u + 4u * tx + j;
                    if (gn < N) {
                        var o = v[j];
                        if (HAS_BIAS == 1u) {
                            o += bias[gn];
                        }
                        y[gm * N + gn] = o;
                    }
                }
            }
        }
    }
}
