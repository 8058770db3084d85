//! The background lane: a small tokio runtime on idle-priority threads for
//! long (CPU-bound) guest calls. A call starts inline on the request's own
//! task; if it is still computing at its first epoch slice it is moved here,
//! so guest computation cannot take the request threads away from the host
//! and from other namespaces' short calls, yet still uses idle CPU fully
//! (the OS gives the lane what the request threads leave).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::RuntimeError;
use super::call::CallTicket;

/// Owns the lane's runtime; shuts it down without blocking when dropped
/// (dropping a runtime inside another runtime's task would panic).
pub struct Lane {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Lane {
    /// `threads == 0`: no lane; long calls stay on the request threads and
    /// only yield at each slice.
    pub fn start(threads: usize) -> Result<Lane, RuntimeError> {
        if threads == 0 {
            return Ok(Lane { runtime: None });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("prism-guest-bg")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map_err(|e| RuntimeError::Engine(format!("cannot start the background lane: {e}")))?;
        Ok(Lane {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> Option<Handle> {
        self.runtime.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The lane's threads run under SCHED_IDLE: the kernel gives them a core
/// only when no ordinary thread wants it, and an ordinary thread waking up
/// preempts them at once. Niceness alone (even 19) still lets a spinning
/// guest delay request threads' wake-ups by a scheduler slice.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` (a valid, live struct) and
    // takes a plain thread id; 0 means the calling thread only.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not put the background lane on SCHED_IDLE; long guest calls compete with requests"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Runs `job` on the caller's task; moves it to the lane once its call
/// reports itself long. Dropping this future cancels the job wherever it runs.
pub fn run<F>(lane: Option<&Handle>, ticket: Arc<CallTicket>, job: F) -> Laned<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Laned {
        inline: Some(Box::pin(job)),
        moved: None,
        lane: lane.cloned(),
        ticket,
    }
}

pub struct Laned<F: Future> {
    inline: Option<Pin<Box<F>>>,
    moved: Option<AbortOnDrop<F::Output>>,
    lane: Option<Handle>,
    ticket: Arc<CallTicket>,
}

/// A spawned task that is aborted when its handle is dropped (the caller
/// gave up: deadline or cancelled request).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<F> Future for Laned<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = Result<F::Output, RuntimeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(moved) = &mut this.moved {
            return Pin::new(&mut moved.0).poll(cx).map(|joined| {
                joined.map_err(|e| RuntimeError::Engine(format!("background call failed: {e}")))
            });
        }
        let Some(job) = this.inline.as_mut() else {
            // Unreachable: the job is either inline or moved.
            return Poll::Ready(Err(RuntimeError::Engine(
                "pattern call polled after it was lost".into(),
            )));
        };
        match job.as_mut().poll(cx) {
            Poll::Ready(output) => {
                this.inline = None;
                Poll::Ready(Ok(output))
            }
            Poll::Pending => {
                // Check the lane before taking the job: without a lane the
                // job stays here (and must not be dropped).
                if this.ticket.is_long()
                    && let Some(lane) = &this.lane
                    && let Some(job) = this.inline.take()
                {
                    let mut moved = AbortOnDrop(lane.spawn(job));
                    let poll = Pin::new(&mut moved.0).poll(cx);
                    this.moved = Some(moved);
                    return poll.map(|joined| {
                        joined.map_err(|e| {
                            RuntimeError::Engine(format!("background call failed: {e}"))
                        })
                    });
                }
                Poll::Pending
            }
        }
    }
}
