//! `marc health`: asks a running server's `grpc.health.v1` service whether it is SERVING, for container
//! health checks (Docker's HEALTHCHECK) and scripts. Kubernetes uses its native gRPC probe instead.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cli::HealthArgs;

/// Succeeds when the server at `--addr` reports SERVING for `--service` within `--timeout-ms`.
pub(crate) fn run(args: &HealthArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let endpoint = format!("http://{}", args.addr);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let status = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .with_context(|| format!("--addr {}: not a host:port", args.addr))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .with_context(|| format!("health check of service {:?} at {endpoint}", args.service))?;
        anyhow::Ok(response.into_inner().status())
    })?;
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        bail!("{endpoint} is {} for service {:?}", status.as_str_name(), args.service);
    }
    Ok(())
}
