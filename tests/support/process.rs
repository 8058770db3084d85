//! What every server the suites start needs: a free port, and a child
//! process waited on until it answers.

use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a server just spawned has to answer.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A free TCP port on 127.0.0.1 (free when asked; servers retry on a clash).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Spawns `command` into `child`, then waits until `ready` says the server
/// answers (polled every 20 ms): fails if the process exits first, or still
/// does not answer after 10 s. `what` names it in those errors
/// ("redis-server on port 6379"); `cannot_run` is the error when it cannot
/// be spawned at all. A child that failed to get ready stays in `child`, for
/// its owner to kill.
pub(crate) async fn spawn_until_ready<F, Fut>(
    command: &mut Command,
    cannot_run: &'static str,
    child: &mut Option<Child>,
    what: &str,
    mut ready: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    *child = Some(command.spawn().context(cannot_run)?);
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            bail!("{what} exited at start: {status}");
        }
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} not answering after {} s", READY_WITHIN.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
