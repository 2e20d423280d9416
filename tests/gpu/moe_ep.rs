//! The expert-parallel MoE layer ([`ExpertParallelMoe`]) against the single-GPU
//! [`MoeLayer`] on the same tokens.
//!
//! * `virtual_ranks_equal_moe_layer`: N = 2, 4, 8 ranks on one GPU, one runner per rank
//!   holding its `E / N` experts, the messages moved between the phases by copies (what
//!   NCCL does between GPUs); skewed routing (every token to one rank's experts), ranks
//!   with no tokens, and an overflowing `max_m`. Every exchange kernel and the phase
//!   order run as on N GPUs; only the transport differs.
//! * `one_rank_nccl_equals_moe_layer` (feature `nccl`): the NCCL path, a communicator of
//!   one GPU (device 0), every message sent by NCCL to the rank itself.
//!
//! Exactness: the received rows of each expert are its slots in the order of the
//! concatenated tokens (rank order, then slot order), at the same masked rows as the
//! single-GPU layer's with the same `max_m`; every row's quantization and GEMM depend on
//! that row alone and the combine sums in the same slot order. So the outputs must be
//! equal bit for bit, and past `max_m` the same slots are dropped. The no-drop cases are
//! also checked against the reference layer with the tolerance of
//! tests/gpu/moe_layer.rs (the kernels accumulate in f32, the reference in f64).
use dsa_kernels::cudarc::driver::{CudaSlice, CudaStream};
use dsa_kernels::moe::{
    Align, EpConfig, ExpertParallelMoe, Fp8Weights, MoeLayer, MoeLayout, MoeShape, MoeWeights,
};
use dsa_kernels::DsaKernels;
use half::bf16;
use std::sync::Arc;

use crate::common::{download, kernels, max_rel_err, upload};
use crate::moe_layer::{shape, Setup, MAX_REL};

fn padded<T: Clone>(mut v: Vec<T>, fill: T) -> Vec<T> {
    if v.is_empty() {
        v.push(fill);
    }
    v
}

/// A stream of its own (rather than the legacy default stream, for NCCL) and its kernels.
fn own_stream() -> (Arc<CudaStream>, DsaKernels) {
    kernels(); // fails the test without a usable device
    let ctx = dsa_kernels::device::open_device(0).expect("CUDA device");
    let s = ctx.new_stream().unwrap();
    let k = DsaKernels::new(s.clone()).unwrap();
    (s, k)
}

/// The weights of rank `rank` of `ranks`: the bias of every expert, w13 / w2 of its
/// experts, the shared expert.
fn local_weights<'a>(
    w: MoeWeights<'a>,
    sh: &MoeShape,
    rank: usize,
    ranks: usize,
) -> MoeWeights<'a> {
    let per = sh.experts / ranks;
    let (h, i) = (sh.hidden, sh.inter);
    let part = |f: &Fp8Weights<'a>, codes: usize, scales: usize| Fp8Weights {
        codes: f.codes.slice(rank * per * codes..(rank + 1) * per * codes),
        scales: f
            .scales
            .slice(rank * per * scales..(rank + 1) * per * scales),
    };
    MoeWeights {
        bias: w.bias.slice(..),
        w13: part(&w.w13, 2 * i * h, (2 * i / 128) * (h / 128)),
        w2: part(&w.w2, h * i, (h / 128) * (i / 128)),
        shared: w.shared,
    }
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn to_f32(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Copies message `q` of every rank's `send` into message `p` of rank `q`'s receive
/// buffer (the all-to-all), through the host.
fn all_to_all<T>(
    s: &Arc<CudaStream>,
    sends: &[Vec<T>],
    recv: &mut CudaSlice<T>,
    q: usize,
    len: usize,
) where
    T: dsa_kernels::cudarc::driver::DeviceRepr + Unpin,
{
    for (p, send) in sends.iter().enumerate() {
        s.memcpy_htod(
            &send[q * len..(q + 1) * len],
            &mut recv.slice_mut(p * len..(p + 1) * len),
        )
        .unwrap();
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn virtual_ranks_equal_moe_layer() {
    let (s, k) = own_stream();
    // (ranks, tokens per rank, skew onto rank 0's experts, max_m (None: never drop), ue8m0)
    type Case = (usize, Vec<usize>, bool, Option<usize>, bool);
    let cases: [Case; 6] = [
        (2, vec![37, 0], false, None, false),
        (2, vec![100, 90], true, Some(64), false),
        (4, vec![5, 0, 64, 1], true, None, true),
        (4, vec![0, 0, 0, 0], false, None, false),
        (8, vec![3, 1, 0, 7, 2, 9, 0, 4], false, None, false),
        (8, vec![16; 8], true, None, true),
    ];
    for (ci, (ranks, tokens, skew, max_m, ue8m0)) in cases.into_iter().enumerate() {
        let max_tokens = tokens.iter().copied().max().unwrap().max(1);
        let t_all: usize = tokens.iter().sum();
        let ep_max_m = max_m.unwrap_or((ranks * max_tokens).next_multiple_of(64));
        let global = shape(
            t_all,
            MoeLayout::Masked { max_m: ep_max_m },
            Align::A64,
            ue8m0,
        );
        let setup = Setup::new(&s, global, Some(128), 70 + ci as u64);
        let (mut logits, x) = setup.inputs(700 + ci as u64);
        let (e, h) = (global.experts, global.hidden);
        if skew {
            // Every token's largest logits on rank 0's experts.
            for row in logits.chunks_mut(e) {
                for l in &mut row[..e / ranks] {
                    *l += 8.0;
                }
            }
        }
        // The single-GPU layer on all tokens.
        let mut layer = MoeLayer::new(&s, &global, &setup.cfg, Some(128)).unwrap();
        let l_all = upload(&s, &padded(logits.clone(), 0.0));
        let x_all = upload(&s, &padded(x.clone(), bf16::ZERO));
        let mut want = upload(&s, &vec![bf16::NAN; (t_all * h).max(8)]);
        layer
            .forward(&k, &setup.weights(), &l_all, &x_all, &mut want)
            .unwrap();
        let want = download(&s, &want);
        // N runners, each with its tokens and experts.
        let first: Vec<usize> = tokens
            .iter()
            .scan(0, |a, &t| {
                let f = *a;
                *a += t;
                Some(f)
            })
            .collect();
        let mut eps = Vec::new();
        let mut inputs = Vec::new();
        for r in 0..ranks {
            let sh = MoeShape {
                tokens: tokens[r],
                ..global
            };
            let cfg = EpConfig {
                rank: r,
                ranks,
                max_tokens,
                max_m,
            };
            eps.push(ExpertParallelMoe::new(&s, &cfg, &sh, &setup.cfg, Some(128)).unwrap());
            let (t0, t1) = (first[r], first[r] + tokens[r]);
            inputs.push((
                upload(&s, &padded(logits[t0 * e..t1 * e].to_vec(), 0.0)),
                upload(&s, &padded(x[t0 * h..t1 * h].to_vec(), bf16::ZERO)),
                upload(&s, &vec![bf16::NAN; (tokens[r] * h).max(8)]),
            ));
        }
        let c = eps[0].message_rows();
        for (r, ep) in eps.iter_mut().enumerate() {
            let w = local_weights(setup.weights(), &global, r, ranks);
            ep.dispatch(&k, &w, &inputs[r].0, &inputs[r].1).unwrap();
        }
        let codes: Vec<Vec<u8>> = eps
            .iter()
            .map(|p| download(&s, &p.send_rows().codes))
            .collect();
        let scales: Vec<Vec<f32>> = eps
            .iter()
            .map(|p| download(&s, &p.send_rows().scales))
            .collect();
        let ids: Vec<Vec<i32>> = eps
            .iter()
            .map(|p| download(&s, &p.send_rows().experts))
            .collect();
        for (q, ep) in eps.iter_mut().enumerate() {
            let recv = ep.recv_rows_mut();
            all_to_all(&s, &codes, &mut recv.codes, q, c * h);
            all_to_all(&s, &scales, &mut recv.scales, q, c * h / 128);
            all_to_all(&s, &ids, &mut recv.experts, q, c);
        }
        for (r, ep) in eps.iter_mut().enumerate() {
            let w = local_weights(setup.weights(), &global, r, ranks);
            ep.run_experts(&k, &w).unwrap();
        }
        let rets: Vec<Vec<bf16>> = eps.iter().map(|p| download(&s, p.return_rows())).collect();
        for (q, ep) in eps.iter_mut().enumerate() {
            all_to_all(&s, &rets, ep.returned_rows_mut(), q, c * h);
        }
        let mut got = Vec::new();
        let mut overflow = 0;
        for (r, ep) in eps.iter_mut().enumerate() {
            let w = local_weights(setup.weights(), &global, r, ranks);
            let (_, x_r, out) = &mut inputs[r];
            ep.combine(&k, &w, &*x_r, out).unwrap();
            got.extend_from_slice(&download(&s, out)[..tokens[r] * h]);
            overflow |= s.clone_dtoh(&ep.receive_plan().status()).unwrap()[0];
        }
        let layer_overflow = s.clone_dtoh(&layer.plan().status()).unwrap()[0];
        let want = &want[..t_all * h];
        let differ = bits(&got)
            .iter()
            .zip(bits(want))
            .filter(|(a, b)| **a != *b)
            .count();
        eprintln!(
            "expert-parallel {ranks} virtual ranks, case {ci} (tokens {tokens:?}, skew {skew}, \
             max_m {ep_max_m}, ue8m0 {ue8m0}): {differ} of {} outputs differ from MoeLayer, \
             overflow {overflow} (MoeLayer {layer_overflow})",
            t_all * h
        );
        assert_eq!(overflow, layer_overflow, "case {ci}: overflow flags differ");
        assert_eq!(differ, 0, "case {ci}: not bit-equal to MoeLayer");
        if max_m.is_none() && t_all > 0 {
            let err = max_rel_err(&to_f32(&got), &setup.reference(&logits, &x));
            eprintln!("  vs the reference layer: max rel err {err:.3e}");
            assert!(err <= MAX_REL, "case {ci}: max rel err {err:.3e}");
        }
    }
}

#[cfg(feature = "nccl")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn one_rank_nccl_equals_moe_layer() {
    use dsa_kernels::cudarc::nccl::Comm;
    let (s, k) = own_stream();
    let comm = Comm::from_devices(vec![s.clone()])
        .expect("an NCCL communicator on device 0 (is libnccl.so.2 on LD_LIBRARY_PATH?)")
        .pop()
        .expect("one communicator");
    let max_tokens = 200usize;
    // (tokens, max_m (None: never drop), ue8m0, shared expert width)
    let cases: [(usize, Option<usize>, bool, Option<usize>); 6] = [
        (77, None, false, Some(128)),
        (1, None, true, Some(256)),
        (0, None, false, Some(128)),
        (200, None, false, None),
        (150, None, true, Some(128)),
        (200, Some(64), false, Some(128)),
    ];
    for (i, (t, max_m, ue8m0, shared)) in cases.into_iter().enumerate() {
        // The single-GPU layer with the max_m the expert-parallel layer uses.
        let ep_max_m = max_m.unwrap_or(max_tokens.next_multiple_of(64));
        let sh = shape(t, MoeLayout::Masked { max_m: ep_max_m }, Align::A64, ue8m0);
        let setup = Setup::new(&s, sh, shared, 40 + i as u64);
        let mut layer = MoeLayer::new(&s, &sh, &setup.cfg, shared).unwrap();
        let cfg = EpConfig::of(&comm, max_tokens, max_m);
        let mut ep = ExpertParallelMoe::new(&s, &cfg, &sh, &setup.cfg, shared).unwrap();
        assert_eq!(ep.local_experts(), 0..sh.experts);
        let (logits, x) = setup.inputs(200 + i as u64);
        let l_dev = upload(&s, &padded(logits.clone(), 0.0));
        let x_dev = upload(&s, &padded(x.clone(), bf16::ZERO));
        let n = (t * sh.hidden).max(8);
        let mut want = upload(&s, &vec![bf16::NAN; n]);
        let mut got = upload(&s, &vec![bf16::NAN; n]);
        let w = setup.weights();
        layer.forward(&k, &w, &l_dev, &x_dev, &mut want).unwrap();
        ep.forward(&k, &comm, &w, &l_dev, &x_dev, &mut got).unwrap();
        let first = download(&s, &got);
        s.memcpy_htod(&vec![bf16::NAN; n], &mut got).unwrap();
        ep.forward(&k, &comm, &w, &l_dev, &x_dev, &mut got).unwrap();
        let second = download(&s, &got);
        let want = download(&s, &want);
        let m = t * sh.hidden;
        assert_eq!(
            bits(&first[..m]),
            bits(&second[..m]),
            "case {i}: two runs differ"
        );
        let differ = bits(&first[..m])
            .iter()
            .zip(bits(&want[..m]))
            .filter(|(a, b)| **a != *b)
            .count();
        let layer_status = s.clone_dtoh(&layer.plan().status()).unwrap();
        let ep_status = s.clone_dtoh(&ep.receive_plan().status()).unwrap();
        eprintln!(
            "expert-parallel NCCL one rank, case {i} (T={t}, max_m={ep_max_m}, ue8m0={ue8m0}, \
             shared={shared:?}): {differ} of {m} outputs differ from MoeLayer, overflow {} \
             (MoeLayer {})",
            ep_status[0], layer_status[0]
        );
        assert_eq!(
            ep_status[0], layer_status[0],
            "case {i}: overflow flags differ"
        );
        assert_eq!(differ, 0, "case {i}: not bit-equal to MoeLayer");
        if max_m.is_none() && t > 0 {
            let err = max_rel_err(&to_f32(&first[..m]), &setup.reference(&logits, &x));
            eprintln!("  vs the reference layer: max rel err {err:.3e}");
            assert!(err <= MAX_REL, "case {i}: max rel err {err:.3e}");
        }
    }
}
