//! CUDA-event timing of a sequence of stages: one event between consecutive stages, so
//! each stage is timed where it runs in the layer (the L2 holds what the previous stage
//! left, as in a real step), and the whole sequence timed again without the events.
use std::sync::Arc;
use std::time::Instant;

use dsa_kernels::cudarc::driver::{sys, CudaEvent, CudaSlice, CudaStream};

use crate::model::Error;

/// Bytes of the buffer zeroed before each timed pass: ~1 ms of device work (4.4 TB/s of
/// memset on the H200) during which the host enqueues the pass (at most ~0.6 ms for the
/// whole layer), so launch overhead never shows as idle time between stages. The pass
/// starts with a cold L2: the previous layer's weights would be gone too.
const HEAD_START_BYTES: usize = 4 << 30;

pub struct Timer {
    stream: Arc<CudaStream>,
    events: Vec<CudaEvent>,
    head_start: CudaSlice<u8>,
    /// Longest host enqueue time of a pass seen, seconds.
    pub max_enqueue: f64,
    /// Device time of the head-start memset, seconds.
    pub head_start_s: f64,
}

impl Timer {
    pub fn new(stream: &Arc<CudaStream>, max_stages: usize) -> Result<Self, Error> {
        let ctx = stream.context();
        let events = (0..=max_stages)
            .map(|_| ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut t = Self {
            stream: stream.clone(),
            events,
            head_start: stream.alloc_zeros(HEAD_START_BYTES)?,
            max_enqueue: 0.0,
            head_start_s: 0.0,
        };
        for _ in 0..2 {
            t.events[0].record(&t.stream)?;
            t.stream.memset_zeros(&mut t.head_start)?;
            t.events[1].record(&t.stream)?;
            t.events[1].synchronize()?;
        }
        t.head_start_s = t.events[0].elapsed_ms(&t.events[1])? as f64 * 1e-3;
        Ok(t)
    }

    /// One pass: `run(i)` for every stage `i < n`, an event after each. Returns the stage
    /// times and the whole pass (seconds).
    pub fn stages(
        &mut self,
        n: usize,
        run: impl FnMut(usize) -> Result<(), Error>,
    ) -> Result<Vec<f64>, Error> {
        assert!(n < self.events.len(), "more stages than events");
        self.stream.memset_zeros(&mut self.head_start)?;
        let t0 = Instant::now();
        self.events[0].record(&self.stream)?;
        let mut run = run;
        for i in 0..n {
            run(i)?;
            self.events[i + 1].record(&self.stream)?;
        }
        self.max_enqueue = self.max_enqueue.max(t0.elapsed().as_secs_f64());
        self.events[n].synchronize()?;
        (0..n)
            .map(|i| Ok(self.events[i].elapsed_ms(&self.events[i + 1])? as f64 * 1e-3))
            .collect()
    }

    /// One pass of the `n` stages with no event between them; (enqueue host time, device
    /// time) in seconds.
    pub fn sequence(
        &mut self,
        n: usize,
        mut run: impl FnMut(usize) -> Result<(), Error>,
    ) -> Result<(f64, f64), Error> {
        self.stream.memset_zeros(&mut self.head_start)?;
        let t0 = Instant::now();
        self.events[0].record(&self.stream)?;
        for i in 0..n {
            run(i)?;
        }
        self.events[1].record(&self.stream)?;
        let host = t0.elapsed().as_secs_f64();
        self.max_enqueue = self.max_enqueue.max(host);
        self.events[1].synchronize()?;
        Ok((
            host,
            self.events[0].elapsed_ms(&self.events[1])? as f64 * 1e-3,
        ))
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
