//! The split kernel launch (plus the combine) of dense paged MLA decode.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::DenseMlaConfig;
use crate::cache::{CacheKind, CacheLayout, PagedCache, KV_LORA_RANK, QK_DIM};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::dense_mla::{self as sys, DsaDenseMlaDecodeParams};

/// The device inputs of one layer's dense decode (layouts in [`crate::dense_mla`]).
#[derive(Debug)]
pub struct DenseMlaArgs<'a, Q, T, S, P> {
    /// bf16 `[batch, s_q, h_q, 576]`.
    pub q: &'a Q,
    /// i32 `[batch, max_pages]`.
    pub block_table: &'a T,
    /// i32 `[batch]`: the lengths the plan was computed from.
    pub seq_lens: &'a S,
    /// The step's plan from [`DsaKernels::dense_mla_plan`] with the same configuration.
    pub plan: &'a P,
}

impl<Q, T, S, P> Clone for DenseMlaArgs<'_, Q, T, S, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Q, T, S, P> Copy for DenseMlaArgs<'_, Q, T, S, P> {}

impl DsaKernels {
    /// Dense paged MLA decode of one layer: the split kernel writes per-piece partials into
    /// `workspace` (f32, at least [`DenseMlaConfig::workspace_len`]), then the combine
    /// kernel writes `out` (bf16 `[batch, s_q, h_q, 512]`) and `lse` (f32
    /// `[batch, s_q, h_q]`). Semantics and the device-side bounds rule for block-table
    /// entries are in [`crate::dense_mla`].
    ///
    /// `cache` is an [`crate::cache::MlaBf16Cache`] or an [`crate::cache::MlaFp8Cache`].
    /// The plan must come from [`Self::dense_mla_plan`] with the same `batch` and
    /// `num_parts` (the kernels clamp what they read from it, so a mismatched plan gives
    /// wrong numbers, never an out-of-bounds access).
    pub fn dense_mla_decode<K, Q, T, S, P, W, O, L>(
        &self,
        cfg: &DenseMlaConfig,
        cache: &PagedCache<K>,
        args: DenseMlaArgs<'_, Q, T, S, P>,
        workspace: &mut W,
        out: &mut O,
        lse: &mut L,
    ) -> Result<()>
    where
        K: CacheKind,
        Q: DevicePtr<bf16>,
        T: DevicePtr<i32>,
        S: DevicePtr<i32>,
        P: DevicePtr<i32>,
        W: DevicePtr<f32> + DevicePtrMut<f32>,
        O: DevicePtrMut<bf16>,
        L: DevicePtrMut<f32>,
    {
        cfg.validate()?;
        let (kernel, smem) = match K::LAYOUT {
            CacheLayout::MlaBf16 => ("dsa_dense_mla_decode_bf16", sys::DSA_DENSE_SMEM_BF16),
            CacheLayout::MlaFp8 => ("dsa_dense_mla_decode_fp8", sys::DSA_DENSE_SMEM_FP8),
            CacheLayout::IndexerK => {
                return Err(DsaError::Unsupported {
                    what: "dense MLA cache",
                    detail: "the indexer K cache holds no MLA keys".into(),
                })
            }
        };
        if (self.device().max_shared_memory_per_block_optin as u32) < smem {
            return Err(DsaError::Unsupported {
                what: "dense MLA decode",
                detail: format!(
                    "needs {smem} bytes of shared memory per block, the device allows {}",
                    self.device().max_shared_memory_per_block_optin
                ),
            });
        }
        let (b, s_q, h_q) = (cfg.batch, cfg.s_q, cfg.h_q);
        check::at_least(
            "dense MLA q",
            args.q.len(),
            b * s_q * h_q * QK_DIM,
            &[b, s_q, h_q, QK_DIM],
        )?;
        check::at_least(
            "block_table",
            args.block_table.len(),
            b * cfg.max_pages,
            &[b, cfg.max_pages],
        )?;
        check::at_least("seq_lens", args.seq_lens.len(), b, &[b])?;
        super::combine::check_combine_buffers(
            cfg,
            args.plan.len(),
            workspace.len(),
            out.len(),
            lse.len(),
        )?;
        let num_pages = check::fits_i32("dense MLA cache pages", cache.num_pages())?;

        let stream = self.stream().clone();
        {
            let (q_ptr, _g0) = args.q.device_ptr(&stream);
            check::aligned("dense MLA q", q_ptr, 16)?;
            let (kv_ptr, _g1) = cache.data().device_ptr(&stream);
            check::aligned("dense MLA cache", kv_ptr, 16)?;
            let (bt_ptr, _g2) = args.block_table.device_ptr(&stream);
            let (lens_ptr, _g3) = args.seq_lens.device_ptr(&stream);
            let (plan_ptr, _g4) = args.plan.device_ptr(&stream);
            let (ws_ptr, _g5) = workspace.device_ptr_mut(&stream);
            check::aligned("dense MLA workspace", ws_ptr, 16)?;
            let lse_part = ws_ptr + (cfg.max_splits() * s_q * h_q * KV_LORA_RANK * 4) as u64;
            let params = DsaDenseMlaDecodeParams {
                q: q_ptr as *const _,
                kv: kv_ptr as *const _,
                block_table: bt_ptr as *const i32,
                seq_lens: lens_ptr as *const i32,
                plan: plan_ptr as *const i32,
                partial_out: ws_ptr as *mut f32,
                partial_lse: lse_part as *mut f32,
                batch: b as i32,
                s_q: s_q as i32,
                h_q: h_q as i32,
                head_groups: cfg.head_groups() as i32,
                max_pages: cfg.max_pages as i32,
                num_pages,
                num_parts: cfg.num_parts as i32,
                scale_log2: cfg.softmax_scale * std::f32::consts::LOG2_E,
            };
            let launch = LaunchConfig {
                grid_dim: (cfg.num_parts as u32, (s_q * cfg.head_groups()) as u32, 1),
                block_dim: (sys::DSA_DENSE_THREADS, 1, 1),
                shared_mem_bytes: smem,
            };
            // SAFETY: every buffer was checked against the extents the kernel indexes with
            // this configuration; cache pages and plan entries are bounds-checked on the
            // device.
            unsafe { self.launch("dense_mla_decode", kernel, launch, &params) }?;
        }
        self.dense_mla_combine(cfg, args.plan, &*workspace, out, lse)
    }
}
