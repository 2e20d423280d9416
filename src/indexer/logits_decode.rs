//! Paged decode logits and their schedule (kernels-cuda/indexer/indexer_logits.cu,
//! `dsa_indexer_decode_plan`, `dsa_indexer_logits_decode_h*_q*`).
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{check_heads, MAX_NEXT_N};
use crate::cache::{IndexerKCache, INDEXER_DIM};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::common as csys;
use crate::sys::indexer::{self as isys, DsaIndexerDecodeParams, DsaIndexerPlanParams};

/// Shape of a paged decode step.
///
/// * `q8`: e4m3 `[batch, next_n, heads, 128]`; `w`: f32 `[batch * next_n, heads]`;
/// * `context_lens`: i32 `[batch]`, each counting the `next_n` new tokens (negative reads
///   as 0);
/// * `block_table`: i32 `[batch, max_pages]`: logical key `s` of batch `b` is at physical
///   slot `block_table[b, s / 64] * 64 + s % 64` of the indexer cache;
/// * `out`: f32 `[batch * next_n, out_stride]`, `out_stride >= max_ctx`. Row `b * next_n +
///   j` holds logical keys `0 ..= len_b - next_n + j`; every other column of `[0, max_ctx)`
///   is `-inf`, and columns `[max_ctx, out_stride)` are left untouched. Keys at or past
///   `max_ctx` or past `max_pages` pages are not represented.
///
/// The block table stays on the device and is bounds-checked there: a page id outside
/// `[0, cache pages)` makes that page's 64 keys `-inf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLogitsShape {
    pub batch: usize,
    pub next_n: usize,
    pub heads: usize,
    pub max_pages: usize,
    pub max_ctx: usize,
    pub out_stride: usize,
}

/// i32 entries of the decode plan workspace for `batch` sequences (`batch + 1`).
pub fn decode_plan_len(batch: usize) -> usize {
    batch + 1
}

/// Dynamic shared memory of the decode kernel computing `n` columns (heads x queries).
fn smem_bytes(n: usize) -> u32 {
    isys::DSA_INDEXER_DECODE_SMEM_BASE + isys::DSA_INDEXER_DECODE_SMEM_PER_COLUMN * n as u32
}

/// CTAs per SM: as many as shared memory holds, at most 3; more CTAs hide more of each
/// page's MMA and reduction latency.
fn ctas_per_sm(smem: u32) -> u32 {
    (csys::DSA_SM90_SMEM_PER_SM / (smem + csys::DSA_SM90_SMEM_RESERVED_PER_CTA)).clamp(1, 3)
}

/// `dsa_indexer_logits_decode_h{H}_q{Q}` for every supported head count and Q in
/// 1..=MAX_NEXT_N: the kernels' naming rule. Which of them exist is the header's business
/// (`DSA_INDEXER_DECODE_QUERIES_H*`).
macro_rules! decode_kernel_names {
    ($($h:literal),*) => {
        [$([
            concat!("dsa_indexer_logits_decode_h", $h, "_q1"),
            concat!("dsa_indexer_logits_decode_h", $h, "_q2"),
            concat!("dsa_indexer_logits_decode_h", $h, "_q3"),
            concat!("dsa_indexer_logits_decode_h", $h, "_q4"),
        ]),*]
    };
}
const DECODE_KERNELS: [[&str; MAX_NEXT_N]; 3] = decode_kernel_names!(16, 32, 64);

/// The decode kernel for `heads` (a supported count) and `next_n` (1..=MAX_NEXT_N), and
/// its queries per CTA: the built kernel with the fewest queries that holds `next_n`.
fn kernel_for(heads: usize, next_n: usize) -> (&'static str, usize) {
    let (i, built) = match heads {
        16 => (0, isys::DSA_INDEXER_DECODE_QUERIES_H16),
        32 => (1, isys::DSA_INDEXER_DECODE_QUERIES_H32),
        _ => (2, isys::DSA_INDEXER_DECODE_QUERIES_H64),
    };
    let q = (next_n.max(1)..=MAX_NEXT_N)
        .find(|q| built >> (q - 1) & 1 == 1)
        .unwrap_or(MAX_NEXT_N);
    (DECODE_KERNELS[i][q - 1], q)
}

fn check_shape(shape: &DecodeLogitsShape) -> Result<()> {
    check_heads(shape.heads)?;
    if shape.next_n == 0 || shape.next_n > MAX_NEXT_N {
        return Err(DsaError::Unsupported {
            what: "decode next_n",
            detail: format!("next_n {} must be in 1..=4", shape.next_n),
        });
    }
    if shape.out_stride < shape.max_ctx {
        return Err(DsaError::Unsupported {
            what: "decode logits out_stride",
            detail: format!(
                "row stride {} is below max_ctx {}",
                shape.out_stride, shape.max_ctx
            ),
        });
    }
    check::fits_i32("decode batch", shape.batch * shape.next_n)?;
    check::fits_i32("decode max_pages", shape.max_pages)?;
    check::fits_i32("decode max_ctx", shape.max_ctx)?;
    check::fits_i32("decode block table", shape.batch * shape.max_pages)?;
    Ok(())
}

impl DsaKernels {
    /// Computes the decode schedule into `plan` (i32, [`decode_plan_len`] entries): the
    /// prefix sums of each sequence's page count. Run it once per decode step, after
    /// `context_lens` is final, and pass the same `plan` to every layer's
    /// [`Self::indexer_logits_decode`] with the same `shape` and `context_lens`. Entirely
    /// on the device (no host sync), so it can be captured in a CUDA graph.
    pub fn indexer_decode_plan<L: DevicePtr<i32>, P: DevicePtrMut<i32>>(
        &self,
        shape: DecodeLogitsShape,
        context_lens: &L,
        plan: &mut P,
    ) -> Result<()> {
        check_shape(&shape)?;
        check::at_least(
            "context_lens",
            context_lens.len(),
            shape.batch,
            &[shape.batch],
        )?;
        check::at_least(
            "decode plan",
            plan.len(),
            decode_plan_len(shape.batch),
            &[decode_plan_len(shape.batch)],
        )?;
        let stream = self.stream().clone();
        let (len_ptr, _g0) = context_lens.device_ptr(&stream);
        let (plan_ptr, _g1) = plan.device_ptr_mut(&stream);
        let params = DsaIndexerPlanParams {
            context_lens: len_ptr as *const i32,
            plan: plan_ptr as *mut i32,
            batch: shape.batch as i32,
            max_pages: shape.max_pages as i32,
            max_ctx: shape.max_ctx as i32,
            _pad: 0,
        };
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: plan holds batch + 1 entries and context_lens batch (checked above).
        unsafe { self.launch("indexer_logits", "dsa_indexer_decode_plan", cfg, &params) }
    }

    /// Indexer logits of one decode step over the paged K cache (layouts in
    /// [`DecodeLogitsShape`]), scheduled by `plan` from [`Self::indexer_decode_plan`]:
    /// the pages of all sequences are split evenly over a fixed grid (two or three CTAs
    /// per SM, by the kernel's shared memory),
    /// and each page is read once for all `next_n * heads` query rows of its sequence.
    ///
    /// `q8` must be 16-byte aligned. A stale or foreign `plan` cannot make the kernel
    /// access memory out of bounds (pages are re-checked against `max_pages`, the block
    /// table against the cache), but then the logits are wrong.
    #[allow(clippy::too_many_arguments)]
    pub fn indexer_logits_decode<
        Q: DevicePtr<u8>,
        W: DevicePtr<f32>,
        L: DevicePtr<i32>,
        B: DevicePtr<i32>,
        P: DevicePtr<i32>,
        O: DevicePtrMut<f32>,
    >(
        &self,
        shape: DecodeLogitsShape,
        q8: &Q,
        w: &W,
        cache: &IndexerKCache,
        context_lens: &L,
        block_table: &B,
        plan: &P,
        out: &mut O,
    ) -> Result<()> {
        check_shape(&shape)?;
        let DecodeLogitsShape {
            batch,
            next_n,
            heads,
            max_pages,
            max_ctx,
            out_stride,
        } = shape;
        let rows = batch * next_n;
        check::at_least(
            "q8",
            q8.len(),
            rows * heads * INDEXER_DIM,
            &[batch, next_n, heads, INDEXER_DIM],
        )?;
        check::at_least("head weights", w.len(), rows * heads, &[rows, heads])?;
        check::at_least("context_lens", context_lens.len(), batch, &[batch])?;
        check::at_least(
            "block_table",
            block_table.len(),
            batch * max_pages,
            &[batch, max_pages],
        )?;
        check::at_least(
            "decode plan",
            plan.len(),
            decode_plan_len(batch),
            &[decode_plan_len(batch)],
        )?;
        check::at_least(
            "decode logits",
            out.len(),
            if rows == 0 {
                0
            } else {
                (rows - 1) * out_stride + max_ctx
            },
            &[rows, out_stride],
        )?;
        if rows == 0 || max_ctx == 0 {
            return Ok(());
        }
        let stream = self.stream().clone();
        let (q_ptr, _g0) = q8.device_ptr(&stream);
        check::aligned("q8", q_ptr, 16)?;
        let (w_ptr, _g1) = w.device_ptr(&stream);
        let (c_ptr, _g2) = cache.data().device_ptr(&stream);
        let (l_ptr, _g3) = context_lens.device_ptr(&stream);
        let (b_ptr, _g4) = block_table.device_ptr(&stream);
        let (p_ptr, _g5) = plan.device_ptr(&stream);
        let (o_ptr, _g6) = out.device_ptr_mut(&stream);
        let params = DsaIndexerDecodeParams {
            q8: q_ptr as *const u8,
            w: w_ptr as *const f32,
            cache: c_ptr as *const u8,
            context_lens: l_ptr as *const i32,
            block_table: b_ptr as *const i32,
            plan: p_ptr as *const i32,
            out: o_ptr as *mut f32,
            out_stride: out_stride as i64,
            num_pages: cache.num_pages() as i64,
            batch: batch as i32,
            next_n: next_n as i32,
            max_pages: max_pages as i32,
            max_ctx: max_ctx as i32,
        };
        let (kernel, nq) = kernel_for(heads, next_n);
        let smem = smem_bytes(heads * nq);
        let splits = ctas_per_sm(smem) * self.device().sm_count.max(1) as u32;
        let cfg = LaunchConfig {
            grid_dim: (splits, 1, 1),
            block_dim: (isys::DSA_INDEXER_LOGITS_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: buffers checked above; block-table entries, page counts and the plan
        // are bounds-checked in the kernel.
        unsafe { self.launch("indexer_logits", kernel, cfg, &params) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_kernel_choice_follows_the_built_variants() {
        let pick = |h, n| kernel_for(h, n);
        assert_eq!(pick(16, 1), ("dsa_indexer_logits_decode_h16_q1", 1));
        assert_eq!(pick(16, 2), ("dsa_indexer_logits_decode_h16_q2", 2));
        // No 48-column kernel: three queries of 16 heads run on the 4-query kernel.
        assert_eq!(pick(16, 3), ("dsa_indexer_logits_decode_h16_q4", 4));
        assert_eq!(pick(16, 4), ("dsa_indexer_logits_decode_h16_q4", 4));
        for (h, name) in [(32, "h32"), (64, "h64")] {
            for n in 1..=MAX_NEXT_N {
                let (k, q) = pick(h, n);
                assert_eq!(q, n);
                assert_eq!(k, format!("dsa_indexer_logits_decode_{name}_q{n}"));
            }
        }
    }

    #[test]
    fn decode_smem_matches_the_kernel_layout() {
        // 6 stages of (8 KB keys + 256 B scales + 16 B meta), 1 KB slack, then per column a
        // 128-byte q row and a 4-byte weight.
        assert_eq!(
            smem_bytes(256),
            1024 + 256 * 128 + 6 * 8192 + 6 * 256 + 256 * 4 + 6 * 16
        );
        assert_eq!(ctas_per_sm(smem_bytes(64)), 3);
        assert_eq!(ctas_per_sm(smem_bytes(256)), 2);
    }
}
