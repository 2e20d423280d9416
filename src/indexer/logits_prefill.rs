//! Ragged prefill logits (kernels-cuda/indexer/indexer_logits.cu, `dsa_indexer_logits_prefill_h*`).
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::check_heads;
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::indexer::DsaIndexerPrefillParams;

/// Shape of a prefill logits call.
///
/// * `q8`: e4m3 `[s_q, heads, 128]`; `w`: f32 `[s_q, heads]` folded weights;
/// * `k8`: e4m3 `[s_kv, 128]`; `kscale`: f32 `[s_kv]` (several sequences may share one key
///   space, each query's range selecting its own);
/// * `ks`, `ke`: i32 `[s_q]`, query `t` sees keys `ks[t] <= s < ke[t]` (clamped to `[0,
///   s_kv]`; `ke <= ks` is an empty row);
/// * `out`: f32 `[s_q, out_stride]`, `out_stride >= s_kv`: columns `[0, s_kv)` of every row
///   are written (`-inf` outside the row's range), columns `[s_kv, out_stride)` are left
///   untouched. [`prefill_out_stride`] gives the padded stride the crate's top-k prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillLogitsShape {
    /// Query tokens.
    pub s_q: usize,
    pub s_kv: usize,
    pub heads: usize,
    pub out_stride: usize,
}

/// `s_kv` rounded up to a multiple of 4 floats, so every row starts 16-byte aligned.
pub fn prefill_out_stride(s_kv: usize) -> usize {
    s_kv.div_ceil(4) * 4
}

const STAGES: usize = 4;
const COLUMNS: usize = 256;

/// Query groups of `256 / heads` queries per CTA (mirror of `kPrefillGroups`).
const GROUPS: usize = 2;
/// CTAs per query block, each a contiguous part of its key tiles: fills the tail wave
/// (2 measured 0-3% faster than 1 at S = 4096, BENCHMARKS.md).
const KEY_SPLITS: usize = 2;

/// Dynamic shared memory of the prefill kernel (mirror of `PrefillCfg::kSmem`).
fn smem_bytes(heads: usize) -> u32 {
    let qpc = GROUPS * COLUMNS / heads;
    (1024
        + GROUPS * COLUMNS * 128
        + STAGES * 8192
        + STAGES * 64 * 4
        + GROUPS * COLUMNS * 4
        + 2 * qpc * 4) as u32
}

impl PrefillLogitsShape {
    /// The shape's rules, pure: supported heads, `out_stride >= s_kv` within i64, `s_q` and
    /// `s_kv` within i32. Returns the elements of `out` the call spans (checked).
    pub fn validate(&self) -> Result<usize> {
        check_heads(self.heads)?;
        if self.out_stride < self.s_kv {
            return Err(DsaError::Unsupported {
                what: "prefill logits out_stride",
                detail: format!("row stride {} is below s_kv {}", self.out_stride, self.s_kv),
            });
        }
        check::fits_i64("prefill logits out_stride", self.out_stride)?;
        check::fits_i32("prefill queries", self.s_q)?;
        check::fits_i32("prefill keys", self.s_kv)?;
        check::span("prefill logits", self.s_q, self.out_stride, self.s_kv)
    }
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
            s_q, s_kv, heads, ..
        } = shape;
        let lens = crate::validate::PrefillLogitsLens {
            q8: q8.len(),
            w: w.len(),
            k8: k8.len(),
            kscale: kscale.len(),
            ks: ks.len(),
            ke: ke.len(),
            out: out.len(),
        };
        crate::validate::indexer_logits_prefill(shape, lens)?;
        if s_q == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaIndexerPrefillParams {
            q8: a.read("q8", q8, 16)?,
            w: a.read("head weights", w, 4)?,
            k8: a.read("k8", k8, 16)?,
            kscale: a.read("kscale", kscale, 16)?,
            ks: a.read("ks", ks, 4)?,
            ke: a.read("ke", ke, 4)?,
            out: a.write("prefill logits", out, 4)?,
            out_stride: shape.out_stride as i64,
            s: s_q as i32,
            s_kv: s_kv as i32,
        };
        let queries_per_cta = GROUPS * COLUMNS / heads;
        let cfg = LaunchConfig {
            grid_dim: (
                check::grid("prefill logits grid", s_q, queries_per_cta)?,
                KEY_SPLITS as u32,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem_bytes(heads),
        };
        let kernel = match heads {
            16 => "dsa_indexer_logits_prefill_h16",
            32 => "dsa_indexer_logits_prefill_h32",
            _ => "dsa_indexer_logits_prefill_h64",
        };
        // SAFETY: every buffer holds what the kernel reads or writes (checked above);
        // ranges are clamped to [0, s_kv] in the kernel.
        unsafe { a.launch("indexer_logits", kernel, cfg, &params) }
    }
}
