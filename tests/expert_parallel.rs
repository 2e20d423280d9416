//! The expert-parallel bookkeeping (CPU): N virtual ranks route their own tokens, plan the
//! dispatch, exchange fixed-size messages, lay the received rows out per local expert,
//! run the reference experts, send the outputs back and combine. The result must equal
//! the single-GPU reference layer on all ranks' tokens concatenated, bit for bit (each
//! row's FP8 quantization and GEMM depend on that row alone, and the combine sums each
//! token's k outputs in the same slot order), and the per-expert layout must equal the
//! single-GPU masked layout of the concatenated routing, bit for bit.
use dsa_kernels::moe::expert_parallel::{message, plan_dispatch, plan_receive, EpPartition};
use dsa_reference::linear::Fp8Weight;
use dsa_reference::moe::{self as rmoe, Mlp, Moe, RouteParams};
use dsa_reference::nn;
use proptest::prelude::*;

const HIDDEN: usize = 128;
const INTER: usize = 128;
const EXPERTS: usize = 16;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn mlp(rng: &mut Rng, inter: usize) -> Mlp {
    let w = |rng: &mut Rng, n, k| Fp8Weight::quantize(n, k, &rng.vec(n * k, 0.1));
    Mlp {
        w1: w(rng, inter, HIDDEN),
        w3: w(rng, inter, HIDDEN),
        w2: w(rng, HIDDEN, inter),
    }
}

/// A small DeepSeek-style layer: 16 experts in 4 groups of 4, 2 groups kept.
fn layer(seed: u64, top_k: usize, skew_rank: Option<(usize, usize)>) -> Moe {
    let mut rng = Rng(seed | 1);
    let mut bias = rng.vec(EXPERTS, 0.05);
    if let Some((rank, ranks)) = skew_rank {
        // Every token prefers the experts of one rank.
        let per = EXPERTS / ranks;
        for b in &mut bias[rank * per..(rank + 1) * per] {
            *b += 4.0;
        }
    }
    Moe {
        gate: rng.vec(EXPERTS * HIDDEN, 0.2),
        bias,
        experts: (0..EXPERTS).map(|_| mlp(&mut rng, INTER)).collect(),
        shared: Some(mlp(&mut rng, INTER)),
        route: RouteParams {
            n_group: 4,
            topk_group: 2,
            top_k,
            renormalize: true,
            route_scale: 2.5,
        },
    }
}

/// What the simulation of N ranks produced.
struct EpRun {
    /// Per rank: `[T_r, hidden]`.
    out: Vec<Vec<f32>>,
    /// The global masked layout seen through the ranks: `[E, max_m]` global slots.
    global_src: Vec<i32>,
    global_masked_m: Vec<i32>,
    overflow: bool,
    send_counts: Vec<Vec<usize>>,
    recv_counts: Vec<Vec<usize>>,
}

fn expert_parallel(moe: &Moe, xs: &[Vec<f32>], ranks: usize, max_m: Option<usize>) -> EpRun {
    let part = EpPartition::new(EXPERTS, ranks).unwrap();
    let per = part.experts_per_rank();
    let k = moe.route.top_k;
    let tokens: Vec<usize> = xs.iter().map(|x| x.len() / HIDDEN).collect();
    let t_max = tokens.iter().copied().max().unwrap_or(0);
    let first_token: Vec<usize> = tokens
        .iter()
        .scan(0, |acc, &t| {
            let f = *acc;
            *acc += t;
            Some(f)
        })
        .collect();
    let cap = part.send_capacity(t_max, k).unwrap();
    let max_m = max_m.unwrap_or_else(|| part.max_m_no_drop(t_max).unwrap());
    // Each rank routes its own tokens and plans its sends.
    let routed: Vec<(Vec<i32>, Vec<f32>)> = (0..ranks)
        .map(|r| {
            let logits = nn::matmul_t(&xs[r], tokens[r], &moe.gate, EXPERTS);
            rmoe::route(&logits, &moe.bias, tokens[r], &moe.route)
        })
        .collect();
    let sends: Vec<_> = (0..ranks)
        .map(|r| plan_dispatch(&part, &routed[r].0, cap).unwrap())
        .collect();
    // The all-to-all: receiver q gets message q of every source, in source order; with
    // each row's token row (what the FP8 codes and scales encode).
    let mut ret: Vec<Vec<f32>> = (0..ranks)
        .map(|_| vec![0f32; ranks * cap * HIDDEN])
        .collect();
    let mut global_src = vec![-1i32; EXPERTS * max_m];
    let mut global_masked_m = vec![0i32; EXPERTS];
    let mut overflow = false;
    let mut recv_counts = Vec::new();
    for q in 0..ranks {
        let recv_experts: Vec<i32> = (0..ranks)
            .flat_map(|s| sends[s].send_experts[message(&sends[s], q)].to_vec())
            .collect();
        let recv_slot = |row: usize| -> (usize, usize) {
            let (s, i) = (row / cap, row % cap);
            (s, sends[s].send_src[q * cap + i] as usize)
        };
        let plan = plan_receive(&part, &recv_experts, cap, max_m).unwrap();
        overflow |= plan.overflow;
        recv_counts.push(plan.recv_counts.clone());
        let mut y_masked = vec![0f32; per * max_m * HIDDEN];
        for g in 0..per {
            let m = plan.masked_m[g] as usize;
            let e = q * per + g;
            global_masked_m[e] = m as i32;
            let mut xin = Vec::with_capacity(m * HIDDEN);
            for i in 0..m {
                let (s, slot) = recv_slot(plan.src[g * max_m + i] as usize);
                let t = slot / k;
                xin.extend_from_slice(&xs[s][t * HIDDEN..(t + 1) * HIDDEN]);
                global_src[e * max_m + i] = ((first_token[s] + t) * k + slot % k) as i32;
            }
            if m > 0 {
                let y = moe.experts[e].forward(&xin, m, false);
                y_masked[g * max_m * HIDDEN..(g * max_m + m) * HIDDEN].copy_from_slice(&y);
            }
        }
        // Return trip: row i of the message to s is received row s * cap + i's output.
        for (row, &mrow) in plan.row_of.iter().enumerate() {
            if mrow < 0 {
                continue;
            }
            let (s, i) = (row / cap, row % cap);
            let m = mrow as usize;
            let dst = (q * cap + i) * HIDDEN;
            ret[s][dst..dst + HIDDEN].copy_from_slice(&y_masked[m * HIDDEN..(m + 1) * HIDDEN]);
        }
    }
    // Each source combines its slots' outputs in slot order, plus its shared expert.
    let out = (0..ranks)
        .map(|r| {
            let (_, w) = &routed[r];
            let mut o = rmoe::combine(&ret[r], &sends[r].send_src, w, tokens[r], k, HIDDEN);
            if let Some(sh) = &moe.shared {
                for (o, s) in o.iter_mut().zip(sh.forward(&xs[r], tokens[r], false)) {
                    *o += s;
                }
            }
            o
        })
        .collect();
    EpRun {
        out,
        global_src,
        global_masked_m,
        overflow,
        send_counts: sends.iter().map(|s| s.send_counts.clone()).collect(),
        recv_counts,
    }
}

/// The single-GPU masked layout with drops past `max_m` (in slot order).
fn masked_with_drops(ids: &[i32], max_m: usize) -> (Vec<i32>, Vec<i32>, bool) {
    let mut masked_m = vec![0i32; EXPERTS];
    let mut src = vec![-1i32; EXPERTS * max_m];
    let mut over = false;
    for (slot, &e) in ids.iter().enumerate() {
        let e = e as usize;
        let i = masked_m[e] as usize;
        if i >= max_m {
            over = true;
            continue;
        }
        src[e * max_m + i] = slot as i32;
        masked_m[e] += 1;
    }
    (src, masked_m, over)
}

fn check_case(
    seed: u64,
    ranks: usize,
    top_k: usize,
    tokens: &[usize],
    skew: Option<usize>,
    max_m: Option<usize>,
) {
    let moe = layer(seed, top_k, skew.map(|r| (r, ranks)));
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let xs: Vec<Vec<f32>> = tokens.iter().map(|&t| rng.vec(t * HIDDEN, 1.0)).collect();
    let run = expert_parallel(&moe, &xs, ranks, max_m);
    let t_all: usize = tokens.iter().sum();
    let x_all: Vec<f32> = xs.concat();
    let logits = nn::matmul_t(&x_all, t_all, &moe.gate, EXPERTS);
    let (ids, _) = rmoe::route(&logits, &moe.bias, t_all, &moe.route);
    // Counts: what each source sends to q is what q counts from it.
    for q in 0..ranks {
        for s in 0..ranks {
            assert_eq!(
                run.recv_counts[q][s], run.send_counts[s][q],
                "counts {s} -> {q}"
            );
        }
    }
    let part = EpPartition::new(EXPERTS, ranks).unwrap();
    let max_m_used = max_m.unwrap_or_else(|| {
        part.max_m_no_drop(tokens.iter().copied().max().unwrap_or(0))
            .unwrap()
    });
    let (src, masked_m, over) = masked_with_drops(&ids, max_m_used);
    assert_eq!(run.global_masked_m, masked_m, "masked_m");
    assert_eq!(run.global_src, src, "masked layout (global slots)");
    assert_eq!(run.overflow, over, "overflow flag");
    if max_m.is_none() {
        assert!(!over, "max_m_no_drop dropped a row");
        assert_eq!(
            src,
            rmoe::permute_masked(&ids, EXPERTS, max_m_used).src,
            "the single-GPU masked layout"
        );
        let want = moe.forward(&x_all, t_all, false);
        let got: Vec<f32> = run.out.concat();
        assert_eq!(got.len(), want.len());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "expert-parallel output vs the single-GPU layer"
        );
    }
    if let Some(r) = skew {
        let per = EXPERTS / ranks;
        if per >= top_k {
            for s in 0..ranks {
                for (d, &c) in run.send_counts[s].iter().enumerate() {
                    if d != r {
                        assert_eq!(c, 0, "skewed routing sent {c} rows to rank {d}");
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn equals_the_single_gpu_layer(
        seed in any::<u64>(),
        log_ranks in 0usize..4,
        top_k in 1usize..=4,
        tokens in proptest::collection::vec(0usize..6, 8),
        skew in proptest::option::of(0usize..8),
    ) {
        let ranks = 1 << log_ranks;
        let skew = skew.map(|r| r % ranks);
        check_case(seed, ranks, top_k, &tokens[..ranks], skew, None);
    }

    #[test]
    fn overflow_drops_the_single_gpu_masked_layouts_rows(
        seed in any::<u64>(),
        log_ranks in 0usize..4,
        top_k in 1usize..=4,
        tokens in proptest::collection::vec(20usize..40, 8),
    ) {
        // 64 rows per expert, up to 320 tokens over 8 ranks, all skewed onto rank 0's
        // experts: some experts overflow, drops must be the single-GPU masked layout's.
        let ranks = 1 << log_ranks;
        let t: Vec<usize> = tokens[..ranks].iter().map(|&t| t * 8 / ranks).collect();
        check_case(seed, ranks, top_k, &t, Some(0), Some(64));
    }
}

#[test]
fn ranks_without_tokens_and_all_on_one_rank() {
    for ranks in [1, 2, 4, 8] {
        let mut tokens = vec![0usize; ranks];
        tokens[ranks - 1] = 5;
        check_case(7, ranks, 2, &tokens, Some(ranks - 1), None);
        check_case(9, ranks, 2, &vec![0; ranks], None, None);
    }
}

#[test]
fn dispatch_bookkeeping_by_hand() {
    // 8 experts over 2 ranks, 3 tokens, top 2; slot order within each destination.
    let part = EpPartition::new(8, 2).unwrap();
    assert_eq!(part.send_capacity(3, 2).unwrap(), 64);
    assert_eq!(part.max_m_no_drop(40).unwrap(), 128);
    let ids = [5, 1, 2, 3, 7, -1];
    let d = plan_dispatch(&part, &ids, 64).unwrap();
    assert_eq!(d.send_counts, vec![3, 2]);
    assert_eq!(&d.send_src[..4], &[1, 2, 3, -1]);
    assert_eq!(&d.send_src[64..67], &[0, 4, -1]);
    assert_eq!(&d.send_experts[..4], &[1, 2, 3, -1]);
    assert_eq!(&d.send_experts[64..67], &[1, 3, -1]);
    assert_eq!(d.row_of, vec![64, 0, 1, 2, 65, -1]);
    // Rank 1 receives from itself only (rank 0 sends nothing): experts 5 and 7 = local 1, 3.
    let mut recv = vec![-1i32; 128];
    recv[64..67].copy_from_slice(&[1, 3, -1]);
    let r = plan_receive(&part, &recv, 64, 64).unwrap();
    assert_eq!(r.recv_counts, vec![0, 2]);
    assert_eq!(r.masked_m, vec![0, 1, 0, 1]);
    assert_eq!(r.src[64], 64);
    assert_eq!(r.src[192], 65);
    assert_eq!(r.row_of[64..66], [64, 192]);
    // Bad inputs are errors, not panics.
    assert!(EpPartition::new(8, 3).is_err());
    assert!(EpPartition::new(8, 0).is_err());
    assert!(plan_dispatch(&part, &ids, 32).is_err());
    assert!(plan_receive(&part, &recv, 64, 100).is_err());
    assert!(plan_receive(&part, &recv[..100], 64, 64).is_err());
    // 65 rows for local expert 0 with max_m 64: the 65th (in receive order) is dropped.
    let mut full = vec![-1i32; 128];
    full[..40].fill(0);
    full[64..89].fill(0);
    let r = plan_receive(&part, &full, 64, 64).unwrap();
    assert!(r.overflow);
    assert_eq!(r.recv_counts, vec![40, 25]);
    assert_eq!(r.masked_m[0], 64);
    assert_eq!(r.row_of[87], 63);
    assert_eq!(r.row_of[88], -1);
    // A message too small for its rows.
    let many = vec![0i32; 65];
    assert!(plan_dispatch(&part, &many, 64).is_err());
}
