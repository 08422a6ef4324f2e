# Sourced by the scripts: system programs found the same way everywhere, and root through
# sudo. tests/support/system.rs is the same lookup for the tests and the bench.

# Where Debian installs programs that an ordinary user's PATH does not name.
system_dirs=(/usr/local/sbin /usr/sbin /sbin /usr/lib/postfix/sbin /usr/lib/rabbitmq/bin)

# program NAME: prints the full path of system program NAME (the PATH first, then
# system_dirs); fails, printing nothing, when it is nowhere.
program() {
  local dir
  type -P "$1" && return 0
  for dir in "${system_dirs[@]}"; do
    [ -x "$dir/$1" ] && { printf '%s\n' "$dir/$1"; return 0; }
  done
  return 1
}

# as_root COMMAND...: runs COMMAND as root, directly when this is root (with the system
# folders on the PATH, as sudo's secure_path has them), else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" "$@"
  else
    sudo "$@"
  fi
}
