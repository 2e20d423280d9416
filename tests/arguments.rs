//! Argument extremes against every operation's host rules (`dsa_kernels::validate` and the
//! shape types' `validate`), on the CPU: dimensions, strides and lengths near 0, 2^31,
//! 2^32, 2^63 and `usize::MAX`, buffers shorter than their shapes, batches past a plan's.
//! Nothing may panic, and whatever is accepted must be launchable without an access
//! outside the buffers: every span the kernel indexes, recomputed here in 128-bit
//! arithmetic, fits its buffer, and every value a kernel takes fits its index type.
use dsa_kernels::cache::{
    write_host_token, IndexerK, MlaBf16, MlaFp8, PagedCache, INDEXER_DIM, KV_LORA_RANK, QK_DIM,
};
use dsa_kernels::dense_mla::DenseMlaConfig;
use dsa_kernels::indexer::{
    decode_plan_len, rope_tables, DecodeLogitsShape, IndexerPrepShape, PrefillLogitsShape, YarnRope,
};
use dsa_kernels::sparse_mla::{SparseDecodeConfig, SparsePrefillConfig};
use dsa_kernels::topk::{PagedTopkShape, TopkShape};
use dsa_kernels::validate::{
    self, PrefillLogitsLens, PrepQLens, SparseDecodeLens, SparsePrefillLens,
};
use dsa_kernels::{DsaDecodeStepConfig, PagedBatchShape};
use proptest::prelude::*;

const I32: u128 = i32::MAX as u128;
const I64: u128 = i64::MAX as u128;

/// A size drawn mostly from the edges where arithmetic wraps or index types overflow.
fn ext() -> impl Strategy<Value = usize> {
    prop_oneof![
        prop::sample::select(vec![
            0usize,
            1,
            2,
            3,
            4,
            63,
            64,
            65,
            128,
            576,
            2048,
            4096,
            (1 << 31) - 1,
            1 << 31,
            (1 << 31) + 1,
            1 << 32,
            (1 << 58) + 1,
            (1 << 63) - 1,
            1 << 63,
            usize::MAX - 575,
            usize::MAX - 7,
            usize::MAX,
        ]),
        0usize..5000,
        any::<usize>(),
    ]
}

/// A buffer length: mostly near a plausible need, sometimes anything.
fn len() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..1 << 20, ext()]
}

/// `(rows - 1) * stride + width`, 0 without rows, in 128 bits.
fn span(rows: usize, stride: usize, width: usize) -> u128 {
    if rows == 0 {
        0
    } else {
        (rows as u128 - 1) * stride as u128 + width as u128
    }
}

fn prod(dims: &[usize]) -> u128 {
    dims.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128))
}

fn batch_shape() -> impl Strategy<Value = PagedBatchShape> {
    (ext(), prop_oneof![1usize..5, ext()], ext()).prop_map(|(batch, next_n, max_pages)| {
        PagedBatchShape {
            batch,
            next_n,
            max_pages,
        }
    })
}

/// A valid batch shape accepted by `validate` keeps every derived count in i32.
fn batch_ok(b: &PagedBatchShape) {
    assert!(b.batch >= 1 && b.next_n >= 1 && b.max_pages >= 1);
    assert!(prod(&[b.batch, b.next_n]) <= I32);
    assert!(prod(&[b.batch, b.max_pages]) <= I32);
    assert!(prod(&[b.max_pages, 64]) <= I32);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn paged_batch(b in batch_shape(), table in len(), lens in len()) {
        if b.validate().is_ok() {
            batch_ok(&b);
        }
        if b.check_buffers(table, lens).is_ok() {
            batch_ok(&b);
            prop_assert!(table as u128 >= prod(&[b.batch, b.max_pages]));
            prop_assert!(lens >= b.batch);
        }
    }

    #[test]
    fn cache_write(src in len(), rows in ext(), stride in ext(), slots in len()) {
        fn one<K: dsa_kernels::cache::CacheKind>(src: usize, rows: usize, stride: usize, slots: usize) {
            if let Ok((n, s)) = validate::write_cache::<K>(src, rows, stride, slots) {
                assert_eq!(n as usize, rows);
                assert_eq!(s as usize, stride);
                assert!(stride >= K::SRC_DIM && stride.is_multiple_of(8));
                assert!(span(rows, stride, K::SRC_DIM) <= src as u128);
                assert!(slots >= rows);
            }
        }
        one::<MlaFp8>(src, rows, stride, slots);
        one::<MlaBf16>(src, rows, stride, slots);
        one::<IndexerK>(src, rows, stride, slots);
    }

    #[test]
    fn cache_capacity(pages in ext()) {
        fn one<K: dsa_kernels::cache::CacheKind>(pages: usize) {
            if let Ok(elems) = PagedCache::<K>::elements_for(pages) {
                assert!(pages >= 1);
                assert_eq!(elems as u128, prod(&[pages, K::ELEMS_PER_PAGE]));
                assert!(prod(&[pages, 64]) <= I32, "every slot addressable by an i32");
            }
        }
        one::<MlaFp8>(pages);
        one::<MlaBf16>(pages);
        one::<IndexerK>(pages);
    }

    #[test]
    fn host_token_writes(image in 0usize..1 << 16, slot in ext()) {
        let mut img = vec![0u8; image];
        let _ = write_host_token::<IndexerK>(&mut img, slot, &[half::bf16::ONE; INDEXER_DIM], true);
        let _ = write_host_token::<MlaFp8>(&mut img, slot, &[half::bf16::ONE; QK_DIM], false);
    }

    #[test]
    fn indexer_prep(tokens in ext(), heads in prop_oneof![1usize..80, ext()], stride in ext(),
                    max_pos in ext(), lens in prop::array::uniform6(len())) {
        let shape = IndexerPrepShape { tokens, heads, token_stride: stride };
        let l = PrepQLens { x: lens[0], positions: lens[1], rope: lens[2], w: lens[3], q8: lens[4], w_out: lens[5] };
        if let Ok(rows) = validate::indexer_prepare_q(shape, max_pos, l) {
            prop_assert_eq!(rows as u128, prod(&[tokens, heads]));
            prop_assert!(rows as u128 <= I32 && max_pos as u128 <= I32 && stride as u128 <= I64);
            prop_assert!(span(tokens, stride, heads * INDEXER_DIM) <= l.x as u128);
            prop_assert!(prod(&[max_pos, 32]) <= l.rope as u128);
            prop_assert!(prod(&[rows, INDEXER_DIM]) <= l.q8 as u128);
            prop_assert!(rows <= l.w && rows <= l.w_out && tokens <= l.positions);
        }
        if validate::indexer_prepare_k(shape, max_pos, lens[0], lens[1], lens[2], lens[3]).is_ok() {
            prop_assert_eq!(heads, 1);
            prop_assert!(span(tokens, stride, INDEXER_DIM) <= lens[0] as u128);
            prop_assert!(tokens as u128 <= I32 && stride as u128 <= I64);
            prop_assert!(tokens <= lens[1] && tokens <= lens[3]);
        }
    }

    #[test]
    fn indexer_decode(b in batch_shape(), heads in prop::sample::select(vec![0usize, 16, 32, 48, 64, 128]),
                      max_ctx in ext(), out_stride in ext(), lens in prop::array::uniform4(len())) {
        let shape = DecodeLogitsShape { heads, max_ctx, out_stride };
        if validate::indexer_decode_plan(&b, shape, lens[2]).is_ok() {
            batch_ok(&b);
            prop_assert!(lens[2] > b.batch);
        }
        if validate::indexer_logits_decode(&b, shape, lens[0], lens[1], lens[2], lens[3]).is_ok() {
            batch_ok(&b);
            prop_assert!(b.next_n <= 4 && [16, 32, 64].contains(&heads));
            prop_assert!(max_ctx as u128 <= I32 && out_stride as u128 <= I64);
            prop_assert!(span(b.rows(), out_stride, max_ctx) <= lens[3] as u128, "logits written outside out");
            prop_assert!(prod(&[b.rows(), heads, INDEXER_DIM]) <= lens[0] as u128);
            prop_assert!(prod(&[b.rows(), heads]) <= lens[1] as u128);
            prop_assert!(lens[2] > b.batch);
        }
        let _ = decode_plan_len(b.batch);
    }

    #[test]
    fn indexer_prefill(s_q in ext(), s_kv in ext(), heads in prop::sample::select(vec![16usize, 32, 64, 65]),
                       out_stride in ext(), lens in prop::array::uniform7(len())) {
        let shape = PrefillLogitsShape { s_q, s_kv, heads, out_stride };
        let l = PrefillLogitsLens { q8: lens[0], w: lens[1], k8: lens[2], kscale: lens[3], ks: lens[4], ke: lens[5], out: lens[6] };
        if validate::indexer_logits_prefill(shape, l).is_ok() {
            prop_assert!(s_q as u128 <= I32 && s_kv as u128 <= I32 && out_stride as u128 <= I64);
            prop_assert!(span(s_q, out_stride, s_kv) <= l.out as u128, "logits written outside out");
            prop_assert!(prod(&[s_q, heads, INDEXER_DIM]) <= l.q8 as u128);
            prop_assert!(prod(&[s_kv, INDEXER_DIM]) <= l.k8 as u128);
            prop_assert!(s_kv <= l.kscale && s_q <= l.ks && s_q <= l.ke);
        }
    }

    #[test]
    fn topk(rows in ext(), cols in ext(), stride in ext(), k in ext(), lens in prop::array::uniform5(len()),
            bounds in any::<bool>(), offsets in any::<bool>()) {
        let shape = TopkShape { rows, cols, row_stride: stride, topk: k };
        let starts = bounds.then_some(lens[1]);
        let offs = offsets.then_some(lens[3]);
        if validate::topk(shape, lens[0], starts, lens[2], offs, lens[4]).is_ok() {
            prop_assert!(rows as u128 <= I32 && cols as u128 <= I32 && stride as u128 <= I64);
            prop_assert!((1..=4096).contains(&k));
            prop_assert!(span(rows, stride, cols) <= lens[0] as u128);
            prop_assert!(prod(&[rows, k]) <= lens[4] as u128);
            prop_assert!(rows <= lens[2] && starts.is_none_or(|s| rows <= s) && offs.is_none_or(|o| rows <= o));
        }
    }

    #[test]
    fn topk_paged(b in batch_shape(), cols in ext(), stride in ext(), k in ext(), logits in len(), out in len()) {
        let shape = PagedTopkShape { cols, row_stride: stride, topk: k, sorted: false };
        if validate::topk_paged(&b, shape, logits, out).is_ok() {
            batch_ok(&b);
            prop_assert!(cols as u128 <= prod(&[b.max_pages, 64]));
            prop_assert!(span(b.rows(), stride, cols) <= logits as u128);
            prop_assert!(prod(&[b.rows(), k]) <= out as u128);
            prop_assert!(stride as u128 <= I64);
        }
    }

    #[test]
    fn dense_mla(b in batch_shape(), heads in prop_oneof![1usize..300, ext()], parts in prop_oneof![1usize..200, ext()],
                 pages in ext(), lens in prop::array::uniform5(len())) {
        let cfg = DenseMlaConfig { heads, num_parts: parts, softmax_scale: 0.1 };
        let _ = (cfg.plan_len(&b), cfg.workspace_len(&b), cfg.max_splits(&b));
        if validate::dense_mla_plan(&cfg, &b, lens[1]).is_ok() {
            batch_ok(&b);
            prop_assert!(cfg.plan_len(&b) <= lens[1]);
        }
        if let Ok(n) = validate::dense_mla_decode(&cfg, &b, lens[0], pages, lens[1], lens[2], lens[3], lens[4]) {
            batch_ok(&b);
            prop_assert_eq!(n as usize, pages);
            prop_assert!(parts <= 65535 && prod(&[b.next_n, heads.div_ceil(64)]) <= 65535);
            let splits = (parts + b.batch) as u128;
            prop_assert!(splits * prod(&[b.next_n, heads, KV_LORA_RANK + 1]) <= lens[2] as u128);
            prop_assert!(prod(&[b.rows(), heads, QK_DIM]) <= lens[0] as u128);
            prop_assert!(prod(&[b.rows(), heads, KV_LORA_RANK]) <= lens[3] as u128);
            prop_assert!(prod(&[b.rows(), heads]) <= I32.min(lens[4] as u128));
        }
    }

    #[test]
    fn sparse_decode(b in batch_shape(), heads in prop_oneof![1usize..300, ext()], topk in ext(),
                     sms in prop_oneof![Just(132usize), ext()], lens in prop::array::uniform7(len()),
                     extras in any::<(bool, bool)>()) {
        let cfg = SparseDecodeConfig { heads, topk, softmax_scale: 0.135 };
        let l = SparseDecodeLens {
            q: lens[0], indices: lens[1], out: lens[2], lse: lens[3],
            topk_length: extras.0.then_some(lens[4]), attn_sink: extras.1.then_some(lens[5]), workspace: lens[6],
        };
        if let Ok((splits, ws)) = validate::sparse_mla_decode(&cfg, &b, sms, l) {
            batch_ok(&b);
            prop_assert!((1..=32).contains(&splits));
            prop_assert!(ws as u128 <= lens[6] as u128);
            if splits > 1 {
                prop_assert_eq!(ws as u128, prod(&[splits, b.rows(), heads, KV_LORA_RANK + 1]));
            }
            prop_assert!(prod(&[heads.div_ceil(64), b.rows(), splits]) <= I32, "grid");
            prop_assert!(prod(&[b.rows(), heads, QK_DIM]) <= lens[0] as u128);
            prop_assert!(prod(&[b.rows(), topk]) <= lens[1] as u128);
            prop_assert!(prod(&[b.rows(), heads, KV_LORA_RANK]) <= lens[2] as u128);
        }
    }

    #[test]
    fn sparse_prefill(s_q in ext(), s_kv in ext(), heads in prop_oneof![1usize..300, ext()], topk in ext(),
                      lens in prop::array::uniform7(len()), tl in any::<bool>()) {
        let cfg = SparsePrefillConfig { s_q, s_kv, heads, topk, softmax_scale: 0.135 };
        let l = SparsePrefillLens { q: lens[0], kv: lens[1], indices: lens[2], out: lens[3], max_logits: lens[4], lse: lens[5], attn_sink: Some(lens[6]) };
        if validate::sparse_mla_prefill(&cfg, tl, l).is_ok() {
            prop_assert!(!tl);
            prop_assert!(prod(&[s_kv, QK_DIM]) <= lens[1] as u128, "kv rows past the buffer count as valid");
            prop_assert!(prod(&[s_q, heads]) <= I32);
            prop_assert!(prod(&[s_q, topk]) <= lens[2] as u128);
        }
    }

    #[test]
    fn decode_step_config(max_batch in ext(), next_n in prop_oneof![1usize..6, ext()], max_pages in ext(),
                          b in batch_shape()) {
        let cfg = DsaDecodeStepConfig::deepseek_v32(max_batch, next_n, max_pages);
        if cfg.validate().is_ok() && cfg.check_batch(&b).is_ok() {
            batch_ok(&b);
            prop_assert!(b.batch <= max_batch && b.next_n == next_n && b.max_pages <= max_pages);
        }
    }

    #[test]
    fn sparse_workspace_covers_every_smaller_batch(max_batch in 1usize..200, next_n in 1usize..3,
                                                   heads in prop::sample::select(vec![16usize, 64, 128]),
                                                   topk in 1usize..4096, sms in 1usize..200) {
        let cfg = SparseDecodeConfig { heads, topk, softmax_scale: 0.1 };
        let max = cfg.workspace_len_up_to(max_batch, next_n, sms);
        for b in 1..=max_batch {
            prop_assert!(cfg.workspace_len(b * next_n, sms) <= max);
        }
    }
}

/// The soundness bugs of the issue, one by one: each is now an `Err`.
#[test]
fn known_holes_are_errors() {
    // write_cache: a row stride near 2^64 made the required length wrap to 0.
    assert!(validate::write_cache::<MlaFp8>(576, 2, usize::MAX - 575, 2).is_err());
    assert!(validate::write_cache::<MlaFp8>(576, 2, (1 << 63) + 8, 2).is_err());
    // Indexer prep: the token stride.
    let prep = IndexerPrepShape {
        tokens: 2,
        heads: 1,
        token_stride: usize::MAX - 127,
    };
    assert!(validate::indexer_prepare_k(prep, 8, 256, 2, 256, 2).is_err());
    let q = PrepQLens {
        x: 1 << 20,
        positions: 2,
        rope: 256,
        w: 128,
        q8: 1 << 20,
        w_out: 128,
    };
    assert!(validate::indexer_prepare_q(IndexerPrepShape { heads: 64, ..prep }, 8, q).is_err());
    // Prefill logits: a huge out_stride wrote outside `out`.
    let pre = PrefillLogitsShape {
        s_q: 2,
        s_kv: 64,
        heads: 64,
        out_stride: usize::MAX - 63,
    };
    let l = PrefillLogitsLens {
        q8: 1 << 20,
        w: 1 << 20,
        k8: 1 << 20,
        kscale: 64,
        ks: 2,
        ke: 2,
        out: 128,
    };
    assert!(validate::indexer_logits_prefill(pre, l).is_err());
    assert!(validate::indexer_logits_prefill(
        PrefillLogitsShape {
            out_stride: 1 << 63,
            ..pre
        },
        l
    )
    .is_err());
    // Decode logits: the same.
    let b = PagedBatchShape {
        batch: 2,
        next_n: 1,
        max_pages: 1,
    };
    let d = DecodeLogitsShape {
        heads: 64,
        max_ctx: 64,
        out_stride: usize::MAX - 63,
    };
    assert!(validate::indexer_logits_decode(&b, d, 1 << 20, 1 << 20, 3, 128).is_err());
    // Decode logits near the kernel's 32-bit key columns and page prefix sums: max_ctx
    // within a page and a tile of i32::MAX, batch x pages per sequence within i32.
    let d = DecodeLogitsShape::new(64, i32::MAX as usize - 100);
    assert!(d.validate(&b).is_err());
    let d = DecodeLogitsShape::new(64, i32::MAX as usize - 127);
    let wide = PagedBatchShape {
        batch: 64,
        next_n: 1,
        max_pages: 1 << 25,
    };
    assert!(d.validate(&wide).is_err());
    assert!(d.validate(&b).is_ok());
    // Sparse prefill with s_kv = 2^58: any index counted as valid.
    let sp = SparsePrefillConfig {
        s_q: 1,
        s_kv: 1 << 58,
        heads: 64,
        topk: 64,
        softmax_scale: 0.1,
    };
    let sl = SparsePrefillLens {
        q: 64 * 576,
        kv: 576,
        indices: 64,
        out: 64 * 512,
        max_logits: 64,
        lse: 64,
        attn_sink: None,
    };
    assert!(validate::sparse_mla_prefill(&sp, false, sl).is_err());
    // MlaFp8Cache::new(2^54 + 1) allocated one page and reported 2^60 tokens.
    assert!(PagedCache::<MlaFp8>::elements_for((1 << 54) + 1).is_err());
    assert!(PagedCache::<MlaFp8>::elements_for(0).is_err());
    // A step's plan is for one batch: a larger batch than configured is refused.
    let cfg = DsaDecodeStepConfig::deepseek_v32(4, 1, 8);
    assert!(cfg.validate().is_ok());
    assert!(cfg
        .check_batch(&PagedBatchShape {
            batch: 5,
            next_n: 1,
            max_pages: 8
        })
        .is_err());
    assert!(cfg
        .check_batch(&PagedBatchShape {
            batch: 4,
            next_n: 2,
            max_pages: 8
        })
        .is_err());
    // A plan buffer from a smaller batch is too short.
    let d = DecodeLogitsShape::new(64, 64);
    assert!(validate::indexer_decode_plan(&PagedBatchShape { batch: 8, ..b }, d, 5).is_err());
    // RoPE tables past the kernels' i32 positions.
    assert!(rope_tables(&YarnRope::deepseek_v32(), 1 << 31).is_err());
}

/// The sparse decode workspace need is not monotonic in the batch; the step sizes for the
/// maximum over all batches.
#[test]
fn sparse_workspace_need_is_not_monotonic() {
    let cfg = SparseDecodeConfig {
        heads: 128,
        topk: 2048,
        softmax_scale: 0.135,
    };
    assert_eq!(cfg.workspace_len(128, 132), 0);
    let at_110 = cfg.workspace_len(110, 132) * 4;
    assert!(at_110 > 80 << 20, "{at_110} bytes at B = 110");
    assert!(cfg.workspace_len_up_to(128, 1, 132) >= cfg.workspace_len(110, 132));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// The MoE family's host rules: a shape that validates has every buffer size and row
    /// count within the kernels' 32-bit row indices; the sizing helpers and the
    /// expert-parallel partition return `Err` (never a wrapped size, never a panic) at the
    /// extremes.
    #[test]
    fn moe_shapes_and_partitions_survive_extremes(
        tokens in ext(), hidden in ext(), inter in ext(), experts in ext(), top_k in ext(),
        max_m in ext(), masked in any::<bool>(), a64 in any::<bool>(), ranks in ext(),
        n_group in ext(), topk_group in ext(),
    ) {
        use dsa_kernels::moe::gemm::contiguous_capacity;
        use dsa_kernels::moe::expert_parallel::EpPartition;
        use dsa_kernels::moe::{Align, MoeLayout, MoeShape, RouteConfig};
        let shape = MoeShape {
            tokens,
            hidden,
            inter,
            experts,
            top_k,
            align: if a64 { Align::A64 } else { Align::A128 },
            layout: if masked { MoeLayout::Masked { max_m } } else { MoeLayout::Contiguous },
            ue8m0: false,
        };
        if shape.validate().is_ok() {
            let rows = shape.rows().unwrap();
            prop_assert!(rows as u128 <= I32);
            for n in [shape.a1_len(), shape.sfa1_len(), shape.h_len(), shape.a2_len(),
                      shape.sfa2_len(), shape.y_len(), shape.plan_len()] {
                prop_assert!(n.is_ok());
            }
        }
        let _ = RouteConfig { n_group, topk_group, renormalize: true, route_scale: 2.5 }
            .validate(&shape);
        if let Ok(c) = contiguous_capacity(tokens, top_k, experts, if a64 { 64 } else { 128 }) {
            prop_assert!(c as u128 <= I32);
            prop_assert!(c as u128 >= tokens as u128 * top_k as u128);
        }
        if let Ok(p) = EpPartition::new(experts, ranks) {
            let _ = p.send_capacity(tokens, top_k);
            let _ = p.max_m_no_drop(tokens);
            let _ = p.rank_of(i32::MAX);
            let _ = p.local_experts(ranks.saturating_sub(1));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// The model-layer operations' host rules (`dsa_kernels::layers`): whatever is accepted
    /// has every span within its buffer and every value the kernels take within its type.
    #[test]
    fn layer_ops_survive_extremes(
        rows in ext(), dim in ext(), stride in ext(), x in len(), w in len(), out in len(),
        out2 in len(), stride2 in ext(), which in 0u8..3,
    ) {
        use dsa_kernels::layers::NormRows;
        let r = NormRows { rows, dim, stride };
        let out_f32 = (which != 1).then_some(out);
        let out_bf16 = (which != 0).then_some((out2, stride2));
        if let Ok(s) = validate::rms_norm(r, x, w, out_f32, out_bf16) {
            prop_assert!(dim > 0 && stride >= dim && rows as u128 <= I32 && dim as u128 <= I32);
            prop_assert!(span(rows, stride, dim) <= x as u128 && stride as u128 <= I64);
            prop_assert!(w >= dim);
            if let Some(o) = out_f32 { prop_assert!(o as u128 >= prod(&[rows, dim])); }
            match out_bf16 {
                Some((o, st)) => {
                    prop_assert_eq!(s as usize, st);
                    prop_assert!(st >= dim && span(rows, st, dim) <= o as u128);
                }
                None => prop_assert_eq!(s, 0),
            }
        }
        if validate::layer_norm(r, x, w, out2, out).is_ok() {
            prop_assert!(span(rows, stride, dim) <= x as u128 && rows as u128 <= I32);
            prop_assert!(w >= dim && out2 >= dim && out as u128 >= prod(&[rows, dim]));
        }
        if let Ok((v, ri, di)) = validate::embedding(stride, dim, x, rows, w, out) {
            prop_assert_eq!((v as usize, ri as usize, di as usize), (stride, rows, dim));
            prop_assert!(dim % 4 == 0 && x as u128 >= prod(&[stride, dim]));
            prop_assert!(w >= rows && out as u128 >= prod(&[rows, dim]));
        }
        if let Ok((n, blocks)) = validate::residual_add(rows, x, w) {
            prop_assert!(n as usize == rows && x >= rows && w >= rows && blocks <= 4096);
        }
        if let Ok((scale_stride, blocks)) = validate::act_quant_f32(rows, dim, stride, x, w, out) {
            prop_assert!(dim > 0 && dim % 128 == 0 && dim as u128 * 2 <= I32);
            prop_assert!(scale_stride >= rows && scale_stride as u128 <= I32);
            prop_assert!(stride >= dim && stride % 4 == 0 && span(rows, stride, dim) <= x as u128);
            prop_assert!(w as u128 >= prod(&[rows, dim]));
            prop_assert!(out as u128 >= prod(&[dim / 128, scale_stride]));
            prop_assert!(blocks as u128 * 4 >= prod(&[rows, dim / 128]));
        }
    }

    /// MLA RoPE's host rules: the last value each (token, head) group touches lies inside
    /// both buffers, positions and tables cover what the kernel reads, and the strides fit
    /// the kernel's types.
    #[test]
    fn mla_rope_survives_extremes(
        tokens in ext(), heads in ext(), src_len in len(), dst_len in len(), ts in ext(),
        hs in ext(), td in ext(), hd in ext(), positions in len(), max_pos in ext(), rope in len(),
    ) {
        use dsa_kernels::layers::RopeRows;
        let src = RopeRows { token_stride: ts, head_stride: hs };
        let dst = RopeRows { token_stride: td, head_stride: hd };
        if let Ok((t, h, mp, _blocks)) = validate::mla_rope(
            tokens, heads, src_len, src, dst_len, dst, positions, max_pos, rope,
        ) {
            prop_assert_eq!((t as usize, h as usize, mp as usize), (tokens, heads, max_pos));
            prop_assert!(positions >= tokens && rope as u128 >= prod(&[max_pos, 32]));
            prop_assert!(hs as u128 <= I32 && hd as u128 <= I32 && ts as u128 <= I64 && td as u128 <= I64);
            if tokens > 0 && heads > 0 {
                let last = |t: usize, h: usize| {
                    (tokens as u128 - 1) * t as u128 + (heads as u128 - 1) * h as u128 + 64
                };
                prop_assert!(last(ts, hs) <= src_len as u128);
                prop_assert!(last(td, hd) <= dst_len as u128);
            }
        }
    }
}
