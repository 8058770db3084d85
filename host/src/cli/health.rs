//! `prism health`: one grpc.health.v1 Check, for container and
//! orchestrator health checks.

use std::net::SocketAddr;
use std::process::ExitCode;

/// `prism health`: one grpc.health.v1 Check, exit 0 only for SERVING.
pub fn run(addr: SocketAddr, service: &str, timeout_ms: u64) -> ExitCode {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prism health: {e}");
            return ExitCode::FAILURE;
        }
    };
    let check = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await?;
        anyhow::Ok(reply.into_inner().status)
    };
    let outcome = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), check).await
    });
    match outcome {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN");
            println!("{name}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("prism health: {addr}: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("prism health: {addr}: no answer within {timeout_ms} ms");
            ExitCode::FAILURE
        }
    }
}
