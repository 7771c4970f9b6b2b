//! The worker's pool of HTTP threads. They call the LLM and nothing else: no Postgres call, no
//! signal (all are blocked in them). Each finished call goes back through a channel, and a
//! byte on a pipe wakes the worker's latch wait.
use super::credential::Credential;
use crate::llm;
use crate::ratelimit::Reservation;
use std::os::fd::RawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Job {
    /// The run_scheduler_once pass that claimed it, if any.
    pub pass: Option<u64>,
    /// The task runs the agent loop: its replies are stored as steps (steps.rs).
    pub looped: bool,
    /// The JSON Schema its final answer must follow.
    pub output_schema: Option<serde_json::Value>,
    pub task_id: String,
    pub fencing_token: i64,
    /// The shard of the task under Citus (None on one server): its reply is recorded with
    /// those of its shard.
    pub shard: Option<i64>,
    /// The request to send, or why none is sent (its row cannot be turned into a call, its
    /// base URL is not allowed): then that is the outcome.
    pub call: Result<llm::Request, llm::Failure>,
    pub timeouts: llm::Timeouts,
    /// The tokens the claim reserved for the call, when a token tier applies.
    pub reservation: Option<Reservation>,
}

pub struct Done {
    pub pass: Option<u64>,
    pub looped: bool,
    pub output_schema: Option<serde_json::Value>,
    pub task_id: String,
    pub fencing_token: i64,
    pub shard: Option<i64>,
    pub outcome: Result<llm::Reply, llm::Failure>,
    pub elapsed: Duration,
    /// What the call was made with (None: no call was made); a 429 pauses it.
    pub credential: Option<Credential>,
    pub reservation: Option<Reservation>,
}

pub struct Pool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    wake_read: RawFd,
    wake_write: RawFd,
    threads: Vec<std::thread::JoinHandle<()>>,
    in_flight: usize,
}

impl Pool {
    pub fn new(size: usize) -> std::io::Result<Pool> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (wake_read, wake_write) = (fds[0], fds[1]);
        let (job_tx, job_rx) = channel::<Job>();
        let (done_tx, done) = channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let threads = without_signals(|| {
            (0..size)
                .map(|i| {
                    let (job_rx, done_tx) = (Arc::clone(&job_rx), done_tx.clone());
                    std::thread::Builder::new()
                        .name(format!("ai_agents-http-{i}"))
                        .spawn(move || serve(&job_rx, &done_tx, wake_write))
                })
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        Ok(Pool {
            jobs: Some(job_tx),
            done,
            wake_read,
            wake_write,
            threads,
            in_flight: 0,
        })
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake_read
    }

    pub fn free(&self) -> usize {
        self.threads.len().saturating_sub(self.in_flight)
    }

    pub fn submit(&mut self, job: Job) {
        if let Some(jobs) = &self.jobs {
            if jobs.send(job).is_ok() {
                self.in_flight += 1;
            }
        }
    }

    /// The calls that have finished since the last look.
    pub fn finished(&mut self) -> Vec<Done> {
        let mut byte = [0u8; 64];
        // SAFETY: reading into a local buffer from our own non-blocking pipe.
        while unsafe { libc::read(self.wake_read, byte.as_mut_ptr().cast(), byte.len()) } > 0 {}
        let done: Vec<Done> = self.done.try_iter().collect();
        self.in_flight -= done.len();
        done
    }

    /// Waits up to `limit` for the calls in flight, for a clean shutdown.
    pub fn drain(&mut self, limit: Duration) -> Vec<Done> {
        self.jobs = None; // threads end once the queue is empty
        let deadline = Instant::now() + limit;
        let mut all = self.finished();
        while self.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(done) => {
                    self.in_flight -= 1;
                    all.push(done);
                }
                Err(_) => break,
            }
        }
        all
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptors once.
        unsafe {
            libc::close(self.wake_read);
            libc::close(self.wake_write);
        }
    }
}

fn serve(jobs: &Mutex<Receiver<Job>>, done: &Sender<Done>, wake_write: RawFd) {
    loop {
        let job = match jobs.lock().map(|rx| rx.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        let started = Instant::now();
        let outcome = match &job.call {
            Ok(request) => llm::call(request, job.timeouts),
            Err(failure) => Err(failure.clone()),
        };
        let finished = Done {
            pass: job.pass,
            looped: job.looped,
            output_schema: job.output_schema,
            task_id: job.task_id,
            fencing_token: job.fencing_token,
            shard: job.shard,
            outcome,
            elapsed: started.elapsed(),
            credential: job.call.as_ref().ok().map(Credential::of),
            reservation: job.reservation,
        };
        if done.send(finished).is_err() {
            return;
        }
        // SAFETY: writing one byte to our own non-blocking pipe; a full pipe already wakes.
        unsafe { libc::write(wake_write, [1u8].as_ptr().cast(), 1) };
    }
}

/// Runs `f` (which spawns threads) with every signal blocked, so the threads inherit a full
/// mask and Postgres's handlers only ever run on the main thread.
fn without_signals<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain signal-mask calls on this thread with valid local sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        result
    }
}
