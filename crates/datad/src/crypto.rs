//! Spreads the AEAD work of one batch over several cores. The event loop routes a batch
//! in order (assigning counters, checking replay windows), the seal or open jobs run here
//! on disjoint slices of the batch buffer, and the loop then finishes and sends the
//! packets in their original order, so per-peer order is kept whatever thread did the
//! crypto. Work is handed over a batch at a time: waking a thread costs more than
//! sealing one packet.

use std::io;
use std::sync::{Arc, Barrier};

/// Below this many packets a batch is sealed or opened on the event-loop thread alone.
const PARALLEL_MIN: usize = 16;

/// The helper threads (none: everything runs on the event-loop thread).
pub(crate) struct CryptoPool {
    pool: Option<rayon::ThreadPool>,
    helpers: usize,
}

impl std::fmt::Debug for CryptoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoPool")
            .field("helpers", &self.helpers)
            .finish()
    }
}

impl CryptoPool {
    /// Starts `helpers` threads. Must run before the sandbox forbids making threads.
    pub(crate) fn new(helpers: usize) -> io::Result<Self> {
        if helpers == 0 {
            return Ok(CryptoPool {
                pool: None,
                helpers,
            });
        }
        // Each thread names itself and sets up its signal stack as it starts, with system
        // calls the sandbox forbids: wait until every one of them is running.
        let started = Arc::new(Barrier::new(helpers + 1));
        let signal = Arc::clone(&started);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(helpers)
            .thread_name(|i| format!("wg-crypto-{i}"))
            .start_handler(move |_| {
                signal.wait();
            })
            .build()
            .map_err(io::Error::other)?;
        started.wait();
        Ok(CryptoPool {
            pool: Some(pool),
            helpers,
        })
    }

    /// For each `stride`-sized piece `i` of `buf` (the last may be shorter) that has a
    /// job, stores `work(job, piece)` in `results[i]` (None where there is no job).
    pub(crate) fn run<J: Sync>(
        &self,
        buf: &mut [u8],
        stride: usize,
        jobs: &[Option<J>],
        results: &mut [Option<usize>],
        work: impl Fn(&J, &mut [u8]) -> Option<usize> + Sync,
    ) {
        let stride = stride.max(1);
        let count = jobs.len().min(results.len());
        match &self.pool {
            Some(pool) if count >= PARALLEL_MIN => {
                // Equal shares for the helpers and this thread, which takes the last one.
                let share = count.div_ceil(self.helpers + 1);
                let work = &work;
                pool.in_place_scope(|scope| {
                    let (mut buf, mut jobs, mut results) = (buf, jobs, results);
                    for _ in 0..self.helpers {
                        let n = share.min(jobs.len());
                        if n == 0 || n == jobs.len() {
                            break;
                        }
                        let at = (n * stride).min(buf.len());
                        let (b, rest_buf) = std::mem::take(&mut buf).split_at_mut(at);
                        let (j, rest_jobs) = jobs.split_at(n);
                        let (r, rest_results) = std::mem::take(&mut results).split_at_mut(n);
                        (buf, jobs, results) = (rest_buf, rest_jobs, rest_results);
                        scope.spawn(move |_| run_range(b, stride, j, r, work));
                    }
                    run_range(buf, stride, jobs, results, work);
                });
            }
            _ => run_range(buf, stride, jobs, results, &work),
        }
    }
}

fn run_range<J>(
    buf: &mut [u8],
    stride: usize,
    jobs: &[Option<J>],
    results: &mut [Option<usize>],
    work: &impl Fn(&J, &mut [u8]) -> Option<usize>,
) {
    for ((piece, job), result) in buf.chunks_mut(stride).zip(jobs).zip(results) {
        *result = job.as_ref().and_then(|job| work(job, piece));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each piece gets its own job's value, whatever thread ran it.
    fn check(helpers: usize, count: usize, stride: usize) {
        let pool = CryptoPool::new(helpers).unwrap();
        let mut buf = vec![0u8; count * stride - stride / 2];
        let jobs: Vec<Option<u8>> = (0..count)
            .map(|i| (i % 5 != 0).then_some(i as u8))
            .collect();
        let mut results = vec![Some(usize::MAX); count];
        pool.run(&mut buf, stride, &jobs, &mut results, |&j, piece| {
            piece.fill(j);
            Some(piece.len())
        });
        for (i, (piece, result)) in buf.chunks(stride).zip(&results).enumerate() {
            match jobs[i] {
                Some(j) => {
                    assert!(piece.iter().all(|&b| b == j), "piece {i}");
                    assert_eq!(*result, Some(piece.len()));
                }
                None => {
                    assert!(piece.iter().all(|&b| b == 0), "piece {i} has no job");
                    assert_eq!(*result, None);
                }
            }
        }
    }

    #[test]
    fn every_piece_is_worked_exactly_by_its_job() {
        for helpers in [0, 1, 3] {
            for count in [1, 15, 16, 17, 64, 129] {
                check(helpers, count, 48);
            }
        }
    }
}
