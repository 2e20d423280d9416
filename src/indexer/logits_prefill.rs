//! Ragged prefill logits (kernels-cuda/indexer/indexer_logits.cu, `dsa_indexer_logits_prefill_h*`).
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::check_heads;
use crate::cache::INDEXER_DIM;
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::indexer::{self as isys, DsaIndexerPrefillParams};

/// Shape of a prefill logits call.
///
/// * `q8`: e4m3 `[s, heads, 128]`; `w`: f32 `[s, heads]` folded weights;
/// * `k8`: e4m3 `[s_kv, 128]`; `kscale`: f32 `[s_kv]` (several sequences may share one key
///   space, each query's range selecting its own);
/// * `ks`, `ke`: i32 `[s]`, query `t` sees keys `ks[t] <= s < ke[t]` (clamped to `[0,
///   s_kv]`; `ke <= ks` is an empty row);
/// * `out`: f32 `[s, out_stride]`, `out_stride >= s_kv`: columns `[0, s_kv)` of every row
///   are written (`-inf` outside the row's range), columns `[s_kv, out_stride)` are left
///   untouched. [`prefill_out_stride`] gives the padded stride the crate's top-k prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillLogitsShape {
    pub s: usize,
    pub s_kv: usize,
    pub heads: usize,
    pub out_stride: usize,
}

/// `s_kv` rounded up to a multiple of 4 floats, so every row starts 16-byte aligned.
pub fn prefill_out_stride(s_kv: usize) -> usize {
    s_kv.div_ceil(4) * 4
}

/// CTAs per query block, each a contiguous part of its key tiles: fills the tail wave
/// (2 measured 0-3% faster than 1 at S = 4096, BENCHMARKS.md).
const KEY_SPLITS: usize = 2;

/// Queries per CTA: groups of `256 / heads` queries.
fn queries_per_cta(heads: usize) -> usize {
    (isys::DSA_INDEXER_PREFILL_GROUPS * isys::DSA_INDEXER_PREFILL_COLUMNS) as usize / heads
}

/// Dynamic shared memory of the prefill kernel.
fn smem_bytes(heads: usize) -> u32 {
    isys::DSA_INDEXER_PREFILL_SMEM_BASE
        + isys::DSA_INDEXER_PREFILL_SMEM_PER_QUERY * queries_per_cta(heads) as u32
}

impl DsaKernels {
    /// Indexer logits of a ragged prefill batch: `out[t, s] = kscale[s] * sum_h w[t, h] *
    /// relu(q8[t, h] . k8[s])` for `s` in `[ks[t], ke[t])`, `-inf` elsewhere in `[0, s_kv)`
    /// (layouts in [`PrefillLogitsShape`]). FP8 tensor cores, fp32 accumulation. Key tiles
    /// outside every row's range of a query block are not computed.
    ///
    /// `q8`, `k8` and `kscale` must be 16-byte aligned; `ks`/`ke` are device data and
    /// clamped in the kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn indexer_logits_prefill<
        Q: DevicePtr<u8>,
        W: DevicePtr<f32>,
        K: DevicePtr<u8>,
        S: DevicePtr<f32>,
        R: DevicePtr<i32>,
        O: DevicePtrMut<f32>,
    >(
        &self,
        shape: PrefillLogitsShape,
        q8: &Q,
        w: &W,
        k8: &K,
        kscale: &S,
        ks: &R,
        ke: &R,
        out: &mut O,
    ) -> Result<()> {
        let PrefillLogitsShape {
            s,
            s_kv,
            heads,
            out_stride,
        } = shape;
        check_heads(heads)?;
        if out_stride < s_kv {
            return Err(DsaError::Unsupported {
                what: "prefill logits out_stride",
                detail: format!("row stride {out_stride} is below s_kv {s_kv}"),
            });
        }
        check::fits_i32("prefill queries", s)?;
        check::fits_i32("prefill keys", s_kv)?;
        check::at_least(
            "q8",
            q8.len(),
            s * heads * INDEXER_DIM,
            &[s, heads, INDEXER_DIM],
        )?;
        check::at_least("head weights", w.len(), s * heads, &[s, heads])?;
        check::at_least("k8", k8.len(), s_kv * INDEXER_DIM, &[s_kv, INDEXER_DIM])?;
        check::at_least("kscale", kscale.len(), s_kv, &[s_kv])?;
        check::at_least("ks", ks.len(), s, &[s])?;
        check::at_least("ke", ke.len(), s, &[s])?;
        check::at_least(
            "prefill logits",
            out.len(),
            if s == 0 {
                0
            } else {
                (s - 1) * out_stride + s_kv
            },
            &[s, out_stride],
        )?;
        if s == 0 {
            return Ok(());
        }
        let stream = self.stream().clone();
        let (q_ptr, _g0) = q8.device_ptr(&stream);
        let (w_ptr, _g1) = w.device_ptr(&stream);
        let (k_ptr, _g2) = k8.device_ptr(&stream);
        let (sc_ptr, _g3) = kscale.device_ptr(&stream);
        let (ks_ptr, _g4) = ks.device_ptr(&stream);
        let (ke_ptr, _g5) = ke.device_ptr(&stream);
        let (o_ptr, _g6) = out.device_ptr_mut(&stream);
        check::aligned("q8", q_ptr, 16)?;
        check::aligned("k8", k_ptr, 16)?;
        check::aligned("kscale", sc_ptr, 16)?;
        let params = DsaIndexerPrefillParams {
            q8: q_ptr as *const u8,
            w: w_ptr as *const f32,
            k8: k_ptr as *const u8,
            kscale: sc_ptr as *const f32,
            ks: ks_ptr as *const i32,
            ke: ke_ptr as *const i32,
            out: o_ptr as *mut f32,
            out_stride: out_stride as i64,
            s: s as i32,
            s_kv: s_kv as i32,
        };
        let queries_per_cta = queries_per_cta(heads);
        let cfg = LaunchConfig {
            grid_dim: (s.div_ceil(queries_per_cta) as u32, KEY_SPLITS as u32, 1),
            block_dim: (isys::DSA_INDEXER_LOGITS_THREADS, 1, 1),
            shared_mem_bytes: smem_bytes(heads),
        };
        let kernel = match heads {
            16 => "dsa_indexer_logits_prefill_h16",
            32 => "dsa_indexer_logits_prefill_h32",
            _ => "dsa_indexer_logits_prefill_h64",
        };
        // SAFETY: every buffer holds what the kernel reads or writes (checked above);
        // ranges are clamped to [0, s_kv] in the kernel.
        unsafe { self.launch("indexer_logits", kernel, cfg, &params) }
    }
}
