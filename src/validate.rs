//! The host rules of every operation, as pure functions of shapes, scalars and buffer
//! lengths (in elements). Each `DsaKernels` method runs exactly its function here before
//! it touches a device pointer, so what these accept is what the kernels can run without
//! an access outside the buffers (device-resident indices are the kernels' business), and
//! they can be exercised without a GPU: every size is computed with checked arithmetic,
//! and every value a kernel takes is bounded by its index type.
use crate::cache::{CacheKind, INDEXER_DIM, KV_LORA_RANK, QK_DIM, ROPE_DIM};
use crate::check;
use crate::dense_mla::DenseMlaConfig;
use crate::error::{DsaError, Result};
use crate::indexer::{decode_plan_len, DecodeLogitsShape, IndexerPrepShape, PrefillLogitsShape};
use crate::layers::{NormRows, RopeRows};
use crate::paged_batch::PagedBatchShape;
use crate::sparse_mla::{SparseDecodeConfig, SparsePrefillConfig};
use crate::topk::{PagedTopkShape, TopkShape};

/// [`crate::DsaKernels::write_cache_device_slots`]: `rows` source rows of `row_stride`
/// elements in `src_len`, one slot each in `slots_len`. Returns the rows and stride as the
/// kernel takes them.
pub fn write_cache<K: CacheKind>(
    src_len: usize,
    rows: usize,
    row_stride: usize,
    slots_len: usize,
) -> Result<(i32, i64)> {
    let r = crate::cache::check_cache_rows::<K>(src_len, rows, row_stride)?;
    check::at_least("slots", slots_len, rows, &[rows])?;
    Ok(r)
}

/// Buffer lengths of an indexer q prep: input `x`, `positions`, the shorter rope table,
/// raw head weights `w`, the e4m3 output `q8` and folded weights `w_out`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrepQLens {
    pub x: usize,
    pub positions: usize,
    pub rope: usize,
    pub w: usize,
    pub q8: usize,
    pub w_out: usize,
}

/// [`crate::DsaKernels::indexer_prepare_q`]. Returns the rows `tokens * heads`.
pub fn indexer_prepare_q(
    shape: IndexerPrepShape,
    max_pos: usize,
    lens: PrepQLens,
) -> Result<usize> {
    let rows = shape.validate(lens.x, max_pos, lens.rope)?;
    let (t, h) = (shape.tokens, shape.heads);
    check::at_least("positions", lens.positions, t, &[t])?;
    check::at_least("head weights", lens.w, rows, &[t, h])?;
    check::holds("q8", lens.q8, &[t, h, INDEXER_DIM])?;
    check::at_least("folded weights", lens.w_out, rows, &[t, h])?;
    Ok(rows)
}

/// [`crate::DsaKernels::indexer_prepare_k_device_slots`]: one head per token, input `x_len`,
/// `positions_len`, the shorter rope table `rope_len`, `slots_len`.
pub fn indexer_prepare_k(
    shape: IndexerPrepShape,
    max_pos: usize,
    x_len: usize,
    positions_len: usize,
    rope_len: usize,
    slots_len: usize,
) -> Result<()> {
    if shape.heads != 1 {
        return Err(DsaError::Shape {
            what: "indexer k heads",
            expected: vec![1],
            got: vec![shape.heads],
        });
    }
    shape.validate(x_len, max_pos, rope_len)?;
    check::at_least("positions", positions_len, shape.tokens, &[shape.tokens])?;
    check::at_least("slots", slots_len, shape.tokens, &[shape.tokens])
}

/// [`crate::DsaKernels::indexer_decode_plan`]: the batch and logits rules, a plan of
/// `plan_len` entries.
pub fn indexer_decode_plan(
    batch: &PagedBatchShape,
    shape: DecodeLogitsShape,
    plan_len: usize,
) -> Result<()> {
    shape.validate(batch)?;
    let need = decode_plan_len(batch.batch);
    check::at_least("decode plan", plan_len, need, &[need])
}

/// [`crate::DsaKernels::indexer_logits_decode`]: `q8`, head weights `w`, plan and `out`
/// lengths. Returns the elements of `out` the call spans.
pub fn indexer_logits_decode(
    batch: &PagedBatchShape,
    shape: DecodeLogitsShape,
    q8_len: usize,
    w_len: usize,
    plan_len: usize,
    out_len: usize,
) -> Result<usize> {
    let out_need = shape.validate(batch)?;
    let (rows, heads) = (batch.rows(), shape.heads);
    check::holds(
        "q8",
        q8_len,
        &[batch.batch, batch.next_n, heads, INDEXER_DIM],
    )?;
    check::holds("head weights", w_len, &[rows, heads])?;
    let need = decode_plan_len(batch.batch);
    check::at_least("decode plan", plan_len, need, &[need])?;
    check::at_least(
        "decode logits",
        out_len,
        out_need,
        &[rows, shape.out_stride],
    )?;
    Ok(out_need)
}

/// Buffer lengths of a prefill logits call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefillLogitsLens {
    pub q8: usize,
    pub w: usize,
    pub k8: usize,
    pub kscale: usize,
    pub ks: usize,
    pub ke: usize,
    pub out: usize,
}

/// [`crate::DsaKernels::indexer_logits_prefill`].
pub fn indexer_logits_prefill(shape: PrefillLogitsShape, lens: PrefillLogitsLens) -> Result<()> {
    let PrefillLogitsShape {
        s_q, s_kv, heads, ..
    } = shape;
    let out_need = shape.validate()?;
    check::holds("q8", lens.q8, &[s_q, heads, INDEXER_DIM])?;
    check::holds("head weights", lens.w, &[s_q, heads])?;
    check::holds("k8", lens.k8, &[s_kv, INDEXER_DIM])?;
    check::at_least("kscale", lens.kscale, s_kv, &[s_kv])?;
    check::at_least("ks", lens.ks, s_q, &[s_q])?;
    check::at_least("ke", lens.ke, s_q, &[s_q])?;
    check::at_least(
        "prefill logits",
        lens.out,
        out_need,
        &[s_q, shape.out_stride],
    )
}

/// [`crate::DsaKernels::topk`]: `logits`, range `starts` (when given), `ends`, row
/// offsets (when given) and `out` lengths.
pub fn topk(
    shape: TopkShape,
    logits_len: usize,
    starts_len: Option<usize>,
    ends_len: usize,
    offsets_len: Option<usize>,
    out_len: usize,
) -> Result<()> {
    let need = shape.validate()?;
    let rows = shape.rows;
    check::at_least("top-k logits", logits_len, need, &[rows, shape.row_stride])?;
    if let Some(s) = starts_len {
        check::at_least("top-k range starts", s, rows, &[rows])?;
    }
    check::at_least("top-k range ends", ends_len, rows, &[rows])?;
    if let Some(o) = offsets_len {
        check::at_least("top-k row offsets", o, rows, &[rows])?;
    }
    check::holds("top-k output", out_len, &[rows, shape.topk])
}

/// [`crate::DsaKernels::topk_paged`]: `logits` and `out` lengths.
pub fn topk_paged(
    batch: &PagedBatchShape,
    shape: PagedTopkShape,
    logits_len: usize,
    out_len: usize,
) -> Result<()> {
    batch.validate()?;
    let rows = batch.rows();
    let need = shape.validate(rows, batch.max_pages)?;
    check::at_least("top-k logits", logits_len, need, &[rows, shape.row_stride])?;
    check::holds("top-k output", out_len, &[rows, shape.topk])
}

/// [`crate::DsaKernels::dense_mla_plan`]: a plan of `plan_len` entries.
pub fn dense_mla_plan(
    cfg: &DenseMlaConfig,
    batch: &PagedBatchShape,
    plan_len: usize,
) -> Result<()> {
    cfg.validate(batch)?;
    let need = cfg.plan_len(batch);
    check::at_least("dense MLA plan", plan_len, need, &[need])
}

/// [`crate::DsaKernels::dense_mla_combine`]: plan, workspace, `out` and `lse` lengths.
pub fn dense_mla_combine(
    cfg: &DenseMlaConfig,
    batch: &PagedBatchShape,
    plan_len: usize,
    workspace_len: usize,
    out_len: usize,
    lse_len: usize,
) -> Result<()> {
    cfg.validate(batch)?;
    let (plan_need, ws_need) = (cfg.plan_len(batch), cfg.workspace_len(batch));
    check::at_least("dense MLA plan", plan_len, plan_need, &[plan_need])?;
    check::at_least("dense MLA workspace", workspace_len, ws_need, &[ws_need])?;
    let (b, n, h) = (batch.batch, batch.next_n, cfg.heads);
    check::holds("dense MLA out", out_len, &[b, n, h, KV_LORA_RANK])?;
    check::holds("dense MLA lse", lse_len, &[b, n, h])
}

/// [`crate::DsaKernels::dense_mla_decode`]: as the combine, plus `q` and the cache's
/// pages (within the kernel's i32).
#[allow(clippy::too_many_arguments)]
pub fn dense_mla_decode(
    cfg: &DenseMlaConfig,
    batch: &PagedBatchShape,
    q_len: usize,
    cache_pages: usize,
    plan_len: usize,
    workspace_len: usize,
    out_len: usize,
    lse_len: usize,
) -> Result<i32> {
    dense_mla_combine(cfg, batch, plan_len, workspace_len, out_len, lse_len)?;
    check::holds(
        "dense MLA q",
        q_len,
        &[batch.batch, batch.next_n, cfg.heads, QK_DIM],
    )?;
    check::fits_i32("dense MLA cache pages", cache_pages)
}

/// Buffer lengths of a sparse decode call (`topk_length` and `attn_sink` when given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SparseDecodeLens {
    pub q: usize,
    pub indices: usize,
    pub out: usize,
    pub lse: usize,
    pub topk_length: Option<usize>,
    pub attn_sink: Option<usize>,
    pub workspace: usize,
}

/// [`crate::DsaKernels::sparse_mla_decode`] on a GPU of `sm_count` SMs. Returns the
/// splits and the workspace elements the call uses.
pub fn sparse_mla_decode(
    cfg: &SparseDecodeConfig,
    batch: &PagedBatchShape,
    sm_count: usize,
    lens: SparseDecodeLens,
) -> Result<(usize, usize)> {
    cfg.validate(batch)?;
    let (b, n, h) = (batch.batch, batch.next_n, cfg.heads);
    check::holds("sparse decode q", lens.q, &[b, n, h, QK_DIM])?;
    check::holds("sparse decode indices", lens.indices, &[b, n, cfg.topk])?;
    check::holds("sparse decode out", lens.out, &[b, n, h, KV_LORA_RANK])?;
    check::holds("sparse decode lse", lens.lse, &[b, n, h])?;
    if let Some(t) = lens.topk_length {
        check::at_least("topk_length", t, b, &[b])?;
    }
    if let Some(s) = lens.attn_sink {
        check::at_least("attn_sink", s, h, &[h])?;
    }
    let splits = cfg.num_splits(batch.rows(), sm_count);
    let ws = cfg.workspace_len_for(batch.rows(), splits);
    check::at_least("sparse decode workspace", lens.workspace, ws, &[ws])?;
    Ok((splits, ws))
}

/// Buffer lengths of a sparse prefill call (`attn_sink` when given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SparsePrefillLens {
    pub q: usize,
    pub kv: usize,
    pub indices: usize,
    pub out: usize,
    pub max_logits: usize,
    pub lse: usize,
    pub attn_sink: Option<usize>,
}

/// [`crate::DsaKernels::sparse_mla_prefill`] (`has_topk_length`: the caller passed a
/// per-batch length, which prefill does not take).
pub fn sparse_mla_prefill(
    cfg: &SparsePrefillConfig,
    has_topk_length: bool,
    lens: SparsePrefillLens,
) -> Result<()> {
    cfg.validate()?;
    if has_topk_length {
        return Err(DsaError::Unsupported {
            what: "sparse prefill topk_length",
            detail: "prefill has no batch dimension: mark unused indices with -1".into(),
        });
    }
    let (s_q, h) = (cfg.s_q, cfg.heads);
    check::holds("sparse prefill q", lens.q, &[s_q, h, QK_DIM])?;
    check::holds("sparse prefill kv", lens.kv, &[cfg.s_kv, QK_DIM])?;
    check::holds("sparse prefill indices", lens.indices, &[s_q, cfg.topk])?;
    check::holds("sparse prefill out", lens.out, &[s_q, h, KV_LORA_RANK])?;
    check::holds("sparse prefill max_logits", lens.max_logits, &[s_q, h])?;
    check::holds("sparse prefill lse", lens.lse, &[s_q, h])?;
    if let Some(s) = lens.attn_sink {
        check::at_least("attn_sink", s, h, &[h])?;
    }
    Ok(())
}

/// [`crate::DsaKernels::rms_norm`]: input `x_len` elements in the layout `rows`, the
/// weight `weight_len`, the f32 output's length if given, the bf16 output's length and
/// row stride if given (at least one output). Returns the bf16 stride as the kernel takes
/// it (0 without a bf16 output).
pub fn rms_norm(
    rows: NormRows,
    x_len: usize,
    weight_len: usize,
    out_f32: Option<usize>,
    out_bf16: Option<(usize, usize)>,
) -> Result<i64> {
    let span = rows.validate()?;
    check::at_least("rms_norm x", x_len, span, &[rows.rows, rows.stride])?;
    check::holds("rms_norm weight", weight_len, &[rows.dim])?;
    if out_f32.is_none() && out_bf16.is_none() {
        return Err(DsaError::Unsupported {
            what: "rms_norm outputs",
            detail: "give out_f32, out_bf16 or both".into(),
        });
    }
    if let Some(len) = out_f32 {
        check::holds("rms_norm out_f32", len, &[rows.rows, rows.dim])?;
    }
    match out_bf16 {
        Some((len, stride)) => {
            let s = check::row_stride("rms_norm out_bf16 stride", stride, rows.dim, 1)?;
            let need = check::span("rms_norm out_bf16", rows.rows, stride, rows.dim)?;
            check::at_least("rms_norm out_bf16", len, need, &[rows.rows, stride])?;
            Ok(s)
        }
        None => Ok(0),
    }
}

/// [`crate::DsaKernels::layer_norm`]: input `x_len` elements in the layout `rows`,
/// `weight_len`, `bias_len`, the output `out_len`.
pub fn layer_norm(
    rows: NormRows,
    x_len: usize,
    weight_len: usize,
    bias_len: usize,
    out_len: usize,
) -> Result<()> {
    let span = rows.validate()?;
    check::at_least("layer_norm x", x_len, span, &[rows.rows, rows.stride])?;
    check::holds("layer_norm weight", weight_len, &[rows.dim])?;
    check::holds("layer_norm bias", bias_len, &[rows.dim])?;
    check::holds("layer_norm out", out_len, &[rows.rows, rows.dim])
}

/// [`crate::DsaKernels::embedding`]: a `[vocab, dim]` table in `table_len`, `rows` token
/// ids in `tokens_len`, the output `out_len`. Returns vocab, rows and dim as the kernel
/// takes them.
pub fn embedding(
    vocab: usize,
    dim: usize,
    table_len: usize,
    rows: usize,
    tokens_len: usize,
    out_len: usize,
) -> Result<(i32, i32, i32)> {
    if dim == 0 || !dim.is_multiple_of(4) {
        return Err(DsaError::Unsupported {
            what: "embedding dim",
            detail: format!("{dim}, must be a positive multiple of 4"),
        });
    }
    check::holds("embedding table", table_len, &[vocab, dim])?;
    check::holds("embedding tokens", tokens_len, &[rows])?;
    check::holds("embedding out", out_len, &[rows, dim])?;
    Ok((
        check::fits_i32("embedding vocab", vocab)?,
        check::fits_i32("embedding rows", rows)?,
        check::fits_i32("embedding dim", dim)?,
    ))
}

/// [`crate::DsaKernels::residual_add`]: `n` elements of `x_len` and `y_len`. Returns `n`
/// as the kernel takes it and the blocks of its grid-stride loop (256 threads each).
pub fn residual_add(n: usize, x_len: usize, y_len: usize) -> Result<(i64, u32)> {
    check::at_least("residual x", x_len, n, &[n])?;
    check::at_least("residual y", y_len, n, &[n])?;
    let n_i = check::fits_i64("residual n", n)?;
    // Four elements per thread per step (the kernel's vector path).
    let blocks = check::grid("residual add grid", n.div_ceil(4), 256)?.min(4096);
    Ok((n_i, blocks))
}

/// [`crate::DsaKernels::mla_rope`]: `tokens` x `heads` groups of 64 values read from
/// `src_len` elements in the layout `src` and written to `dst_len` in `dst`, `positions_len`
/// positions, RoPE tables of `max_pos` rows whose shorter holds `rope_len` values.
/// Returns tokens, heads and `max_pos` as the kernel takes them and its blocks (4 groups
/// each).
#[allow(clippy::too_many_arguments)]
pub fn mla_rope(
    tokens: usize,
    heads: usize,
    src_len: usize,
    src: RopeRows,
    dst_len: usize,
    dst: RopeRows,
    positions_len: usize,
    max_pos: usize,
    rope_len: usize,
) -> Result<(i32, i32, i32, u32)> {
    let ss = src.span("mla_rope src", tokens, heads)?;
    let ds = dst.span("mla_rope dst", tokens, heads)?;
    check::at_least("mla_rope src", src_len, ss, &[tokens, heads, ROPE_DIM])?;
    check::at_least("mla_rope dst", dst_len, ds, &[tokens, heads, ROPE_DIM])?;
    check::holds("mla_rope positions", positions_len, &[tokens])?;
    let max_pos = crate::indexer::check_rope_tables(max_pos, rope_len)?;
    let groups = check::product("mla_rope tokens * heads", &[tokens, heads])?;
    let blocks = check::grid("mla_rope grid", groups, 4)?;
    Ok((
        check::fits_i32("mla_rope tokens", tokens)?,
        check::fits_i32("mla_rope heads", heads)?,
        max_pos,
        blocks,
    ))
}

/// [`crate::DsaKernels::act_quant_f32`]: `rows` f32 rows of `cols` values (a positive
/// multiple of 128) at row stride `x_stride` (a multiple of 4) in `x_len`, codes
/// `codes_len`, MN-major scales `scales_len`. Returns the scale stride and the kernel's
/// blocks (4 warps, one per 128-value block).
pub fn act_quant_f32(
    rows: usize,
    cols: usize,
    x_stride: usize,
    x_len: usize,
    codes_len: usize,
    scales_len: usize,
) -> Result<(usize, u32)> {
    let (stride, scale_len) = crate::moe::plain_sizes("act_quant", rows, cols)?;
    check::row_stride("act_quant x stride", x_stride, cols, 4)?;
    let span = check::span("act_quant x", rows, x_stride, cols)?;
    check::at_least("act_quant x", x_len, span, &[rows, x_stride])?;
    check::holds("act_quant codes", codes_len, &[rows, cols])?;
    check::at_least(
        "act_quant scales",
        scales_len,
        scale_len,
        &[cols / crate::moe::MOE_BLOCK, stride],
    )?;
    let warps = check::product("act_quant blocks", &[rows, cols / crate::moe::MOE_BLOCK])?;
    let blocks = check::grid("act_quant grid", warps, 4)?;
    Ok((stride, blocks))
}
