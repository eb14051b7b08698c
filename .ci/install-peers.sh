#!/usr/bin/env bash
# Installs the real SMTP peers the interop tests drive (idempotent).
# Postfix is installed only for its tools (smtp-sink, smtp-source); its daemon
# is never started.
set -euo pipefail
need_apt=0
command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || need_apt=1
command -v swaks >/dev/null 2>&1 || need_apt=1
command -v socat >/dev/null 2>&1 || need_apt=1
command -v curl >/dev/null 2>&1 || need_apt=1
if [ "$need_apt" = 1 ]; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postfix swaks socat curl msmtp libnet-ssleay-perl libio-socket-ssl-perl >/dev/null
fi
python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install -q aiosmtpd
