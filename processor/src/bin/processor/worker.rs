//! `processor worker`: consumes tasks from RabbitMQ (placeholder until the worker lands).

#[derive(clap::Args)]
pub struct WorkerArgs {}

pub fn run(_args: WorkerArgs) -> anyhow::Result<()> {
    super::init_tracing();
    anyhow::bail!("the worker is not implemented yet")
}
