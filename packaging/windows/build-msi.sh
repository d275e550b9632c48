#!/usr/bin/env bash
# Build the Windows installer on Linux, in one command:   packaging/windows/build-msi.sh
# Cross-compiles posgate.exe for x86_64-pc-windows-gnu (mingw-w64 links it, see .cargo/config.toml), then
# packages it with wixl into target/windows/posgate-<version>-x64.msi and lists what the MSI holds.
# Needs: rustup target add x86_64-pc-windows-gnu; Debian/Ubuntu: apt install gcc-mingw-w64-x86-64 wixl
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
# The shipped profile (`dist` in Cargo.toml: stripped, LTO), as the .deb carries.
cargo build --profile dist --locked --target x86_64-pc-windows-gnu --bin posgate
# wixl wants source paths relative to the working directory (the repository root here).
mkdir -p target/windows
msi=target/windows/posgate-$version-x64.msi
wixl --arch x64 -D Version="$version" -D Exe=target/x86_64-pc-windows-gnu/dist/posgate.exe -D Root=. -o "$msi" packaging/windows/posgate.wxs
# Proof of what is inside: the service, its control, the custom actions and the files.
for table in ServiceInstall ServiceControl CustomAction File; do
    echo "== $table"
    msiinfo export "$msi" "$table" | tail -n +4
done
echo "built $msi"
