//! Man pages and shell completions, generated from the clap definitions (one source of
//! truth): `davdrive generate-docs DIR`, run by `packaging/deb/build`.

use std::path::Path;

use clap::CommandFactory;

use super::Cli;

/// Writes `DIR/man1/davdrive.1` and one page per subcommand (`davdrive-mount.1`, ...), and
/// the completions for bash, zsh and fish.
pub fn generate(dir: &Path) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let man = dir.join("man1");
    std::fs::create_dir_all(&man).map_err(|e| err(&man, e))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).map_err(|e| err(&man, e))?;
    for (shell, sub, name) in [
        (clap_complete::Shell::Bash, "bash", "davdrive"),
        (clap_complete::Shell::Zsh, "zsh", "_davdrive"),
        (clap_complete::Shell::Fish, "fish", "davdrive.fish"),
    ] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
        let path = d.join(name);
        let mut f = std::fs::File::create(&path).map_err(|e| err(&path, e))?;
        clap_complete::generate(shell, &mut cmd.clone(), "davdrive", &mut f);
    }
    Ok(())
}
