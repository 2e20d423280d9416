//! FP8 1x128 quantization into grouped-GEMM operands: the permutation of token rows
//! (w13's A), SwiGLU of the w13 output (w2's A), and plain rows (a dense FP8 linear's A).
//!
//! Codes are e4m3 `[rows, cols]` row-major; scales f32 MN-major as the GEMM reads them
//! (module docs of [`crate::moe`]): contiguous `[cols / 128, scale_stride]` with element (row, kb) at
//! `kb * scale_stride + row`, masked `[E, cols / 128, max_m]`. Per 128-column block,
//! `scale = max(amax, 1e-4) / 448` (rounded up to a power of two with UE8M0) and
//! `code = e4m3(value / scale)` (round to nearest even, saturating): bit-equal to
//! `dsa_reference::linear::quantize_act_1x128`.
//!
//! Inputs and codes must be 16-byte aligned (vector loads and stores).
//!
//! Rows written: contiguous `[0, offsets[E])`, i.e. every segment including its padding
//! rows (codes 0 and the scale of a zero block, so a padding row is finite and reads no
//! input); the tail past the last segment is not written (the GEMM skips rows whose
//! `m_indices` is -1 past the segments). Masked: for expert `g`, rows up to
//! `round_up(masked_m[g], align)` (capped at `max_m`); rows past that are not written.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

/// Columns one warp of the quantizers takes at a time (`kChunkBlocks` 128-column blocks
/// in kernels-cuda/moe/moe_quant.cuh): the launch sizes its grid by these chunks.
const QUANT_CHUNK_COLS: usize = 4 * MOE_BLOCK;

use super::shape::mul;
use super::{MoeLayout, MoePlan, MoeShape, MOE_BLOCK};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::moe::{DsaMoeQuantParams, DSA_MOE_QUANT_THREADS};

/// Where a quantizing launch reads and writes, before pointers are taken.
struct QuantJob<'a> {
    kernel: &'static str,
    family: &'static str,
    plan: Option<&'a MoePlan>,
    shape: Option<&'a MoeShape>,
    rows: usize,
    cols: usize,
    x_stride: usize,
    scale_stride: usize,
    pow2: bool,
}

impl DsaKernels {
    /// Gathers each routed row's token from `x` (bf16 `[tokens, hidden]`, 16-byte
    /// aligned) into the plan's row space and quantizes it: `a` e4m3 `[rows, hidden]`,
    /// `sfa` f32 scales ([`MoeShape::sfa1_len`], layout in the [module docs](self)).
    /// Row `r` holds token `src[r] / top_k`.
    pub fn moe_permute_quant<X, A, S>(
        &self,
        shape: &MoeShape,
        plan: &MoePlan,
        x: &X,
        a: &mut A,
        sfa: &mut S,
    ) -> Result<()>
    where
        X: DevicePtr<bf16>,
        A: DevicePtrMut<u8>,
        S: DevicePtrMut<f32>,
    {
        shape.validate()?;
        plan.check_for(shape)?;
        let need = mul("MoE x", shape.tokens, shape.hidden)?;
        check::at_least("MoE x", x.len(), need, &[shape.tokens, shape.hidden])?;
        check::at_least(
            "MoE a1",
            a.len(),
            shape.a1_len()?,
            &[shape.rows()?, shape.hidden],
        )?;
        check::at_least(
            "MoE sfa1",
            sfa.len(),
            shape.sfa1_len()?,
            &[shape.sfa1_len()?],
        )?;
        let job = QuantJob {
            kernel: "dsa_moe_permute_quant",
            family: "moe_permute",
            plan: Some(plan),
            shape: Some(shape),
            rows: shape.rows()?,
            cols: shape.hidden,
            x_stride: shape.hidden,
            scale_stride: shape.scale_stride()?,
            pow2: shape.ue8m0,
        };
        self.quantize(&job, x, a, sfa)
    }

    /// SwiGLU + quantization of the w13 output `h` (bf16 `[rows, 2 inter]`, each row
    /// `[gate | up]`, 16-byte aligned) into w2's A: `a = bf16(silu(gate) * up)` in f32
    /// steps (the reference's, with the host libm's exponential), then quantized: `a2`
    /// e4m3 `[rows, inter]`, `sfa2` ([`MoeShape::sfa2_len`]). Padding rows read nothing
    /// of `h` and get zero codes with the floor scale, so no NaN or garbage a GEMM left
    /// there reaches w2.
    pub fn moe_swiglu_quant<H, A, S>(
        &self,
        shape: &MoeShape,
        plan: &MoePlan,
        h: &H,
        a2: &mut A,
        sfa2: &mut S,
    ) -> Result<()>
    where
        H: DevicePtr<bf16>,
        A: DevicePtrMut<u8>,
        S: DevicePtrMut<f32>,
    {
        shape.validate()?;
        plan.check_for(shape)?;
        let rows = shape.rows()?;
        check::at_least("MoE h", h.len(), shape.h_len()?, &[rows, 2 * shape.inter])?;
        check::at_least("MoE a2", a2.len(), shape.a2_len()?, &[rows, shape.inter])?;
        check::at_least(
            "MoE sfa2",
            sfa2.len(),
            shape.sfa2_len()?,
            &[shape.sfa2_len()?],
        )?;
        let job = QuantJob {
            kernel: "dsa_moe_swiglu_quant",
            family: "moe_swiglu",
            plan: Some(plan),
            shape: Some(shape),
            rows,
            cols: shape.inter,
            x_stride: 2 * shape.inter,
            scale_stride: shape.scale_stride()?,
            pow2: shape.ue8m0,
        };
        self.quantize(&job, h, a2, sfa2)
    }

    /// SwiGLU + quantization of `m` plain rows (the shared expert, or any dense FP8
    /// MLP): `h` bf16 `[m, 2 n]` -> `codes` e4m3 `[m, n]`, `scales` f32 MN-major `[n /
    /// 128, round_up(m, 4)]`.
    pub fn fp8_swiglu_quant_rows<H, A, S>(
        &self,
        m: usize,
        n: usize,
        ue8m0: bool,
        h: &H,
        codes: &mut A,
        scales: &mut S,
    ) -> Result<()>
    where
        H: DevicePtr<bf16>,
        A: DevicePtrMut<u8>,
        S: DevicePtrMut<f32>,
    {
        let (stride, sl) = plain_sizes("FP8 SwiGLU rows", m, n)?;
        let two_n = mul("FP8 SwiGLU rows", n, 2)?;
        check::at_least("FP8 SwiGLU input", h.len(), m * two_n, &[m, two_n])?;
        check::at_least("FP8 SwiGLU codes", codes.len(), m * n, &[m, n])?;
        check::at_least(
            "FP8 SwiGLU scales",
            scales.len(),
            sl,
            &[n / MOE_BLOCK, stride],
        )?;
        let job = QuantJob {
            kernel: "dsa_moe_swiglu_quant",
            family: "moe_swiglu",
            plan: None,
            shape: None,
            rows: m,
            cols: n,
            x_stride: two_n,
            scale_stride: stride,
            pow2: ue8m0,
        };
        self.quantize(&job, h, codes, scales)
    }

    /// FP8 1x128 quantization of `m` plain rows (the input of a dense FP8 linear, e.g.
    /// the shared expert's w13): `x` bf16 `[m, k]` -> `codes` e4m3 `[m, k]`, `scales` f32
    /// MN-major `[k / 128, round_up(m, 4)]` (element (row, kb) at `kb * round_up(m, 4) +
    /// row`).
    pub fn fp8_quantize_rows<X, A, S>(
        &self,
        m: usize,
        k: usize,
        ue8m0: bool,
        x: &X,
        codes: &mut A,
        scales: &mut S,
    ) -> Result<()>
    where
        X: DevicePtr<bf16>,
        A: DevicePtrMut<u8>,
        S: DevicePtrMut<f32>,
    {
        let (stride, sl) = plain_sizes("FP8 quantize rows", m, k)?;
        check::at_least("FP8 quantize input", x.len(), m * k, &[m, k])?;
        check::at_least("FP8 quantize codes", codes.len(), m * k, &[m, k])?;
        check::at_least(
            "FP8 quantize scales",
            scales.len(),
            sl,
            &[k / MOE_BLOCK, stride],
        )?;
        let job = QuantJob {
            kernel: "dsa_moe_permute_quant",
            family: "moe_permute",
            plan: None,
            shape: None,
            rows: m,
            cols: k,
            x_stride: k,
            scale_stride: stride,
            pow2: ue8m0,
        };
        self.quantize(&job, x, codes, scales)
    }

    fn quantize<X, A, S>(&self, job: &QuantJob<'_>, x: &X, a: &mut A, sfa: &mut S) -> Result<()>
    where
        X: DevicePtr<bf16>,
        A: DevicePtrMut<u8>,
        S: DevicePtrMut<f32>,
    {
        if job.rows == 0 {
            return Ok(());
        }
        let stream = self.stream().clone();
        let mut args = self.args();
        let xp = args.read::<bf16, _>("MoE quantize input", x, 16)?;
        let ap = args.write("MoE quantize codes", a, 16)?;
        let sp = args.write("MoE quantize scales", sfa, 4)?;
        let null = std::ptr::null::<i32>();
        let (mut src, mut offsets, mut masked_m) = (null, null, null);
        let (mut top_k, mut experts, mut max_m, mut align) = (1, 0, 0, 128);
        let mut slots = job.rows as i32;
        let mut _guard = None;
        if let (Some(plan), Some(shape)) = (job.plan, job.shape) {
            let sec = plan.sections();
            let (base, g) = plan.ptr(&stream, 0);
            _guard = Some(g);
            // SAFETY: offsets inside the plan's one buffer (PlanSections of this shape).
            unsafe {
                src = base.add(sec.src);
                match shape.layout {
                    MoeLayout::Contiguous => offsets = base.add(sec.offsets),
                    MoeLayout::Masked { max_m: mm } => {
                        masked_m = base.add(sec.masked_m);
                        max_m = mm as i32;
                    }
                }
            }
            top_k = shape.top_k as i32;
            slots = shape.slots()? as i32;
            experts = shape.experts as i32;
            align = shape.align.rows() as i32;
        }
        let params = DsaMoeQuantParams {
            x: xp as *const u16,
            src,
            offsets,
            masked_m,
            codes: ap,
            scales: sp,
            x_stride: job.x_stride as i64,
            rows: job.rows as i32,
            cols: job.cols as i32,
            top_k,
            experts,
            max_m,
            scale_stride: job.scale_stride as i32,
            align,
            pow2: i32::from(job.pow2),
            slots,
            reserved: 0,
        };
        // One warp per 512-column chunk of a row in a grid-stride loop: enough CTAs to
        // fill the device without launching one per worst-case chunk (most of them idle
        // at small T).
        let warps_per_cta = DSA_MOE_QUANT_THREADS as usize / 32;
        let max_ctas = self.sm_count() * 8;
        let units = job.rows.saturating_mul(job.cols.div_ceil(QUANT_CHUNK_COLS));
        let launch = LaunchConfig {
            grid_dim: (
                units.div_ceil(warps_per_cta).clamp(1, max_ctas) as u32,
                1,
                1,
            ),
            block_dim: (DSA_MOE_QUANT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the callers checked x, a and sfa against the rows, columns and scale
        // layout; the plan pointers cover its arrays; the kernel bounds rows by `rows`.
        unsafe { args.launch(job.family, job.kernel, launch, &params) }
    }
}

/// Scale stride `round_up(m, 4)` and scale count of `m` plain rows of `cols` columns (a
/// positive multiple of 128), every size within the kernels' 32-bit indexing.
pub(crate) fn plain_sizes(what: &'static str, m: usize, cols: usize) -> Result<(usize, usize)> {
    if cols == 0 || !cols.is_multiple_of(MOE_BLOCK) {
        return Err(DsaError::Unsupported {
            what,
            detail: format!("{cols} columns, must be a positive multiple of 128"),
        });
    }
    check::fits_i32(what, m)?;
    let stride = super::gemm::sfa_row_stride(m);
    check::fits_i32(what, stride)?;
    check::fits_i32(what, cols.saturating_mul(2))?;
    let sl = (cols / MOE_BLOCK)
        .checked_mul(stride)
        .filter(|_| m.checked_mul(cols.saturating_mul(2)).is_some())
        .ok_or(DsaError::Capacity {
            what,
            needed: usize::MAX,
            capacity: usize::MAX,
        })?;
    Ok((stride, sl))
}
