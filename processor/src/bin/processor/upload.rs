//! `processor upload`: sends a file to the task manager (placeholder until the client lands).

#[derive(clap::Args)]
pub struct UploadArgs {}

pub fn run(_args: UploadArgs) -> anyhow::Result<()> {
    anyhow::bail!("upload is not implemented yet")
}
