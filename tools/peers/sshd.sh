#!/usr/bin/env bash
# sshd.sh - a throwaway OpenSSH sshd on 127.0.0.1 for kiln's examples and benchmarks.
#
#   sshd.sh install            install openssh-server + openssh-client (ssh-agent, ssh-add) if
#                              missing, create the password-test user kilntest, whose password
#                              the password and PAM keyboard-interactive tests use (idempotent)
#   sshd.sh start PORT DIR     start sshd on 127.0.0.1:PORT (PORT 0 = pick a free one) with its own
#                              host key, client key and config in DIR; prints PORT, FINGERPRINT, KEY,
#                              KNOWN_HOSTS as KEY=value lines (eval-able)
#   sshd.sh stop DIR           stop the sshd started with DIR (only that pid)
#
# MOTO_KEYS=http://127.0.0.1:PORT on start: sshd also accepts the public keys of the EC2 key
# pairs that moto_server holds (an AuthorizedKeysCommand asking moto's DescribeKeyPairs), as
# an instance booted from such a key pair would (examples/aws-ami, bench/amazon).
#
# The integration tests do not use this script: tests/it/peers/sshd.rs starts its own sshd the
# same way so every test owns its peer.
set -euo pipefail

die() { echo "sshd.sh: $*" >&2; exit 1; }

install() {
  local missing=()
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  # ssh-agent and ssh-add: the agent-auth tests (tests/it/peers/agent.rs)
  command -v ssh >/dev/null && command -v scp >/dev/null && command -v ssh-keygen >/dev/null \
    && command -v ssh-agent >/dev/null && command -v ssh-add >/dev/null \
    || missing+=(openssh-client)
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update only when the package is unknown to the local cache
    apt-cache show "${missing[@]}" >/dev/null 2>&1 || apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # the privilege-separation dir sshd insists on
  mkdir -p /run/sshd
  # password-auth tests log in as this user (tests/it/peers/sshd.rs PASSWORD_USER/PASSWORD);
  # the peers only listen on 127.0.0.1
  if ! id kilntest >/dev/null 2>&1; then
    useradd -m -s /bin/sh kilntest
    echo 'kilntest:kilntest-pw' | chpasswd
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || { for p in $(shuf -i 20000-60000 -n 50); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }; done; die "no free port"; }
}

start() {
  local port=${1:?usage: sshd.sh start PORT DIR} dir=${2:?usage: sshd.sh start PORT DIR}
  [ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd missing: run '$0 install'"
  mkdir -p "$dir" /run/sshd
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; then
    die "already running (pid $(cat "$dir/sshd.pid")); '$0 stop $dir' first"
  fi
  [ "$port" = 0 ] && port=$(free_port)
  [ -f "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C kiln-host -f "$dir/ssh_host_ed25519_key"
  [ -f "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C kiln-client -f "$dir/id_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  cat > "$dir/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $port
HostKey $dir/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Subsystem sftp internal-sftp
AllowTcpForwarding yes
MaxSessions 100
MaxStartups 100:30:200
UseDNS no
PrintMotd no
LogLevel VERBOSE
CFG
  if [ -n "${MOTO_KEYS:-}" ]; then
    # sshd checks the program's path (root-owned python3), not the script it is given.
    cat > "$dir/moto-keys.py" <<PY
import re, urllib.request
req = urllib.request.Request("${MOTO_KEYS%/}/", data=b"Action=DescribeKeyPairs&IncludePublicKey=true&Version=2016-11-15",
    headers={"Authorization": "AWS4-HMAC-SHA256 Credential=x/20240101/${MOTO_REGION:-us-east-1}/ec2/aws4_request, SignedHeaders=host, Signature=00",
             "Content-Type": "application/x-www-form-urlencoded"})
keys = re.findall(r"<publicKey>([^<]+)</publicKey>", urllib.request.urlopen(req, timeout=30).read().decode())
open("$dir/moto-keys.calls", "a").write("1\n")   # benchmarks subtract these lookups from moto's request count
for k in keys:
    print(k.strip())
PY
    printf 'AuthorizedKeysCommand /usr/bin/python3 %s %%u\nAuthorizedKeysCommandUser root\n' "$dir/moto-keys.py" >> "$dir/sshd_config"
  fi
  /usr/sbin/sshd -t -f "$dir/sshd_config" || die "sshd rejected $dir/sshd_config"
  setsid /usr/sbin/sshd -D -e -f "$dir/sshd_config" </dev/null >"$dir/sshd.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$dir/sshd.pid"
  for _ in $(seq 250); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/sshd.log" >&2; die "sshd exited during start"; }
    sleep 0.02
  done
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { kill "$pid"; cat "$dir/sshd.log" >&2; die "sshd did not listen on $port within 5 s"; }
  local fp
  fp=$(ssh-keygen -l -E sha256 -f "$dir/ssh_host_ed25519_key.pub" | awk '{print $2}')
  echo "[127.0.0.1]:$port $(cut -d' ' -f1-2 "$dir/ssh_host_ed25519_key.pub")" > "$dir/known_hosts"
  echo "PORT=$port"
  echo "FINGERPRINT=$fp"
  echo "KEY=$dir/id_ed25519"
  echo "KNOWN_HOSTS=$dir/known_hosts"
  echo "PID=$pid"
}

stop() {
  local dir=${1:?usage: sshd.sh stop DIR}
  [ -f "$dir/sshd.pid" ] || { echo "not running"; return 0; }
  local pid; pid=$(cat "$dir/sshd.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$dir/sshd.pid"
  echo "stopped sshd $pid"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 install | start PORT DIR | stop DIR" >&2; exit 2 ;;
esac
