// Finds libtandem.so: $TANDEM_LIB_DIR, else `pkg-config --libs-only-L tandem`, else the system
// linker path. No external crates, so it builds offline. At run time the loader finds
// libtandem.so.0 as usual (LD_LIBRARY_PATH, ldconfig, or an rpath the final binary sets).
use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TANDEM_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let mut dirs = Vec::new();
    if let Ok(dir) = env::var("TANDEM_LIB_DIR") {
        dirs.push(dir);
    } else if let Ok(output) = Command::new("pkg-config").args(["--libs-only-L", "tandem"]).output() {
        if output.status.success() {
            let flags = String::from_utf8_lossy(&output.stdout).to_string();
            dirs.extend(flags.split_whitespace().filter_map(|f| f.strip_prefix("-L")).map(String::from));
        }
    }
    for dir in &dirs {
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rustc-link-lib=dylib=tandem");
}
