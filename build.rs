// sqlx::migrate! embeds migrations/ at compile time; without this, adding,
// editing or removing a migration would not rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
