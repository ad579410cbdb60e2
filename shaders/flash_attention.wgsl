// Flash-style attention: out = softmax(q·kᵀ · scale) · v per (batch, head), computed tile by
// tile with an online softmax (running max and sum in f32), so the [S_q, S_kv] score matrix is
// never stored. Non-causal, no mask (the transformer's joint text+image attention).
//
// `const HEAD_DIM: u32 = <Dh>u;` and `const BC: u32 = <keys per tile>u;` are prepended by
// src/kernels/attention.rs (through kernels::launch), one pipeline per (head size, tile): Dh a
// multiple of 4, at most 128; BC 8 within WebGPU's default 16 KiB of workgroup memory, 16 where
// the device grants 24 KiB. Bindings follow kernels::launch: inputs q, k, v, then the output,
// then params. launch binds the inputs contiguous, so every tensor is read as row-major vec4s.
//
// Work split: one workgroup = BR query rows of one (batch, head); T threads per row, each thread
// owning every T-th vec4 of the head dimension (vec4 index c = t + T·i). Partial q·k dot
// products of the T threads are summed through workgroup memory; every thread of a row then
// runs the same online-softmax update on the same full scores, so m and l agree without
// further communication.
//
// Workgroup memory at HEAD_DIM = 128: k_tile + v_tile 2·BC·128·4 B, part_sums BR·BC·T·4 B:
// 12 KiB at BC = 8 (WebGPU's default limit is 16 KiB), 24 KiB at BC = 16.

const T: u32 = 4u;                    // threads per query row
const BR: u32 = 32u;                  // query rows per workgroup
const WG: u32 = 128u;                 // BR * T threads
const D4: u32 = HEAD_DIM / 4u;        // vec4s per head row
const DV: u32 = (D4 + T - 1u) / T;    // vec4s held per thread

struct Params {
    // batch B, heads H, query length S_q, key/value length S_kv
    dims: vec4<u32>,
    // x: softmax scale (usually 1/sqrt(Dh)); y, z, w unused
    scale: vec4<f32>,
}

// Every binding is read_write although only `out` is written: cubecl suballocates tensors from
// shared wgpu buffers, and one buffer bound read-only and read-write in the same dispatch is a
// usage conflict. (So uniformity comes from workgroupUniformLoad, not from read-only storage.)

// q: [B, H, S_q, Dh] f32, contiguous, as vec4s
@group(0) @binding(0) var<storage, read_write> q: array<vec4<f32>>;
// k: [B, H, S_kv, Dh] f32, contiguous, as vec4s
@group(0) @binding(1) var<storage, read_write> k: array<vec4<f32>>;
// v: [B, H, S_kv, Dh] f32, contiguous, as vec4s
@group(0) @binding(2) var<storage, read_write> v: array<vec4<f32>>;
// out: [B, H, S_q, Dh] f32, contiguous, as vec4s
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
// params: Params (32 bytes)
@group(0) @binding(4) var<storage, read_write> params: Params;

// k_tile, v_tile: [BC, D4] vec4 rows of the current key tile (zeros past S_kv)
var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * D4>;
// part_sums: [BR, BC, T] per-thread partial dot products
var<workgroup> part_sums: array<f32, BR * BC * T>;
// number of key tiles, shared so the tile loop (which holds barriers) is workgroup-uniform
var<workgroup> tile_count: u32;

// Grid: (ceil(S_q / BR), H, B).
@compute @workgroup_size(128)
fn flash_attention(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let heads = params.dims.y;
    let seq_q = params.dims.z;
    let seq_kv = params.dims.w;
    let scale = params.scale.x;

    let row = lid / T;
    let t = lid % T;
    let h = wg.y;
    let b = wg.z;
    let qi = wg.x * BR + row;
    let row_ok = qi < seq_q;

    // This thread's slice of the (pre-scaled) query row.
    var qreg: array<vec4<f32>, DV>;
    var acc: array<vec4<f32>, DV>;
    let q_row = ((b * heads + h) * seq_q + min(qi, seq_q - 1u)) * D4;
    for (var i = 0u; i < DV; i++) {
        let c = t + T * i;
        var x = vec4<f32>(0.0);
        if (c < D4 && row_ok) {
            x = q[q_row + c];
        }
        qreg[i] = x * scale;
        acc[i] = vec4<f32>(0.0);
    }

    var m = -3.0e38; // running max of the scores seen so far
    var l = 0.0;     // running sum of exp(score - m)
    let kv_head = (b * heads + h) * seq_kv * D4;
    if (lid == 0u) {
        tile_count = (seq_kv + BC - 1u) / BC;
    }
    let n_tiles = workgroupUniformLoad(&tile_count);

    for (var tile = 0u; tile < n_tiles; tile++) {
        let key0 = tile * BC;

        // Cooperative load of BC key and value rows.
        for (var e = lid; e < BC * D4; e += WG) {
            let j = e / D4;
            let c = e % D4;
            let key = key0 + j;
            var kx = vec4<f32>(0.0);
            var vx = vec4<f32>(0.0);
            if (key < seq_kv) {
                kx = k[kv_head + key * D4 + c];
                vx = v[kv_head + key * D4 + c];
            }
            k_tile[e] = kx;
            v_tile[e] = vx;
        }
        workgroupBarrier();

        // Partial dot products over this thread's vec4s.
        for (var j = 0u; j < BC; j++) {
            var s = 0.0;
            for (var i = 0u; i < DV; i++) {
                let c = t + T * i;
                if (c < D4) {
                    s += dot(qreg[i], k_tile[j * D4 + c]);
                }
            }
            part_sums[(row * BC + j) * T + t] = s;
        }
        workgroupBarrier();

        // Full scores, online softmax update.
        var sc: array<f32, BC>;
        var m_tile = m;
        for (var j = 0u; j < BC; j++) {
            let p = (row * BC + j) * T;
            var s = 0.0;
            for (var u = 0u; u < T; u++) {
                s += part_sums[p + u];
            }
            sc[j] = s;
            if (key0 + j < seq_kv) {
                m_tile = max(m_tile, s);
            }
        }
        let alpha = exp(m - m_tile);
        l = l * alpha;
        for (var i = 0u; i < DV; i++) {
            acc[i] = acc[i] * alpha;
        }
        for (var j = 0u; j < BC; j++) {
            var p = 0.0;
            if (key0 + j < seq_kv) {
                p = exp(sc[j] - m_tile);
            }
            l += p;
            for (var i = 0u; i < DV; i++) {
                let c = t + T * i;
                if (c < D4) {
                    acc[i] += p * v_tile[j * D4 + c];
                }
            }
        }
        m = m_tile;
        workgroupBarrier();
    }

    if (row_ok) {
        let o_row = ((b * heads + h) * seq_q + qi) * D4;
        let inv_l = 1.0 / l;
        for (var i = 0u; i < DV; i++) {
            let c = t + T * i;
            if (c < D4) {
                out[o_row + c] = acc[i] * inv_l;
            }
        }
    }
}
