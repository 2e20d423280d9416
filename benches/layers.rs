//! The per-token layer ops of the V3.2 forward at real sizes (hidden 7168, 128 heads,
//! q_lora 1536, kv_lora 512): GB/s of the bytes each must move, against the copy rate.
//! These are pure streaming kernels, so the copy rate is their floor.
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use dsa_kernels::indexer::{rope_tables, RopeTablesRef, YarnRope};
use dsa_kernels::layers::{NormInput, NormRows, RopeRows};
use dsa_kernels::DsaKernels;
use half::bf16;

const HIDDEN: usize = 7168;
const HEADS: usize = 128;
const QK_HEAD: usize = 192; // 128 nope + 64 rope
const VOCAB: usize = 129_280;

fn work(bytes: usize) -> common::Work {
    common::Work {
        bytes: bytes as f64,
        anchor: Some(common::anchors::COPY_GBS.get()),
        anchor_unit: "GB/s",
        ..Default::default()
    }
}

fn benches(c: &mut Criterion) {
    let Some(k) = common::kernels() else { return };
    let k: &DsaKernels = &k;
    let s = k.stream().clone();
    for rows in [32usize, 128, 4096] {
        // RMSNorm of the f32 residual stream into bf16 (the pre-attention and pre-MoE norms).
        let x = s.clone_htod(&vec![0.25f32; rows * HIDDEN]).unwrap();
        let w = s.clone_htod(&vec![1.0f32; HIDDEN]).unwrap();
        let mut out = s.alloc_zeros::<bf16>(rows * HIDDEN).unwrap();
        common::bench_case(
            c,
            "layers",
            &format!("rms_norm/{rows}x{HIDDEN}"),
            &s,
            work(rows * HIDDEN * (4 + 2) + HIDDEN * 4),
            true,
            || {
                k.rms_norm::<_, dsa_kernels::cudarc::driver::CudaSlice<bf16>, _>(
                    NormRows::contiguous(rows, HIDDEN),
                    NormInput::F32(&x),
                    &w,
                    1e-6,
                    None,
                    Some((&mut out, HIDDEN)),
                )
                .unwrap()
            },
        );

        // Residual add: f32 stream += bf16 block output.
        let mut stream_x = s.clone_htod(&vec![0.5f32; rows * HIDDEN]).unwrap();
        let y = s
            .clone_htod(&vec![bf16::from_f32(0.5); rows * HIDDEN])
            .unwrap();
        common::bench_case(
            c,
            "layers",
            &format!("residual_add/{rows}x{HIDDEN}"),
            &s,
            work(rows * HIDDEN * (4 + 2 + 4)),
            true,
            || k.residual_add(&mut stream_x, &y, rows * HIDDEN).unwrap(),
        );

        // Embedding gather from an f32 table of the real vocabulary.
        if rows <= 128 {
            let table = s.alloc_zeros::<f32>(VOCAB * HIDDEN).unwrap();
            let toks: Vec<i32> = (0..rows).map(|r| ((r * 7919) % VOCAB) as i32).collect();
            let toks = s.clone_htod(&toks).unwrap();
            let mut emb = s.alloc_zeros::<f32>(rows * HIDDEN).unwrap();
            common::bench_case(
                c,
                "layers",
                &format!("embedding/{rows}x{HIDDEN}"),
                &s,
                work(rows * HIDDEN * 8 + rows * 4),
                true,
                || {
                    k.embedding(&table, VOCAB, HIDDEN, &toks, rows, &mut emb)
                        .unwrap()
                },
            );
        }

        // RoPE of the query's 64 rope values per head, in place in [rows, 128, 192].
        let max_pos = 8192;
        let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), max_pos).unwrap();
        let cos = s.clone_htod(&cos).unwrap();
        let sin = s.clone_htod(&sin).unwrap();
        let pos: Vec<i32> = (0..rows).map(|r| (r % max_pos) as i32).collect();
        let pos = s.clone_htod(&pos).unwrap();
        let q = s
            .clone_htod(&vec![bf16::from_f32(0.5); rows * HEADS * QK_HEAD])
            .unwrap();
        let mut q_out = s.alloc_zeros::<bf16>(rows * HEADS * QK_HEAD).unwrap();
        let layout = RopeRows {
            token_stride: HEADS * QK_HEAD,
            head_stride: QK_HEAD,
        };
        let q_rope = q.slice(128..);
        let mut q_out_rope = q_out.slice_mut(128..);
        common::bench_case(
            c,
            "layers",
            &format!("mla_rope/{rows}x{HEADS}x64"),
            &s,
            work(rows * HEADS * 64 * 2 * 2 + rows * 4),
            true,
            || {
                k.mla_rope(
                    rows,
                    HEADS,
                    &q_rope,
                    layout,
                    &mut q_out_rope,
                    layout,
                    &pos,
                    RopeTablesRef {
                        cos: &cos,
                        sin: &sin,
                        max_pos,
                    },
                )
                .unwrap()
            },
        );

        // FP8 1x128 quantization of f32 activations (the A side of the FP8 linears).
        let codes_len = rows * HIDDEN;
        let mut codes = s.alloc_zeros::<u8>(codes_len).unwrap();
        let mut scales = s
            .alloc_zeros::<f32>(HIDDEN / 128 * rows.next_multiple_of(4))
            .unwrap();
        common::bench_case(
            c,
            "layers",
            &format!("act_quant_f32/{rows}x{HIDDEN}"),
            &s,
            work(rows * HIDDEN * (4 + 1) + rows * HIDDEN / 128 * 4),
            true,
            || {
                k.act_quant_f32(rows, HIDDEN, HIDDEN, false, &x, &mut codes, &mut scales)
                    .unwrap()
            },
        );
    }
}

criterion_group!(layers, benches);
criterion_main!(layers);
