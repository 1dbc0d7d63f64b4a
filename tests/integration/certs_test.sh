#!/usr/bin/env bash
# certs_test.sh [BUILD_DIR]: the upseal-certs command line, checked against
# the openssl command line (pins, chains, extensions, a real mutual-TLS
# handshake). BUILD_DIR defaults to build. Prints `ok - ...` / `not ok - ...`
# per check and ends with `certs: N passed, M failed`; exit 1 if any failed.
set -u

BUILD=${1:-build}
PASS=0
FAIL=0
SERVER_PID=
T=$(mktemp -d /tmp/upseal-certs-test-XXXXXX) || exit 1

cleanup() {
	stop_server
	rm -rf "$T"
}
trap cleanup EXIT

ok() {
	echo "ok - $1"
	PASS=$((PASS + 1))
}

# notok NAME [DETAIL...]: a failed check, with what was seen.
notok() {
	echo "not ok - $1"
	shift
	local line
	for line in "$@"; do
		echo "#   $line"
	done
	FAIL=$((FAIL + 1))
}

finish() {
	echo "certs: $PASS passed, $FAIL failed"
	[ "$FAIL" -eq 0 ]
	exit $?
}

if [ ! -x "$BUILD/upseal-certs" ]; then
	notok "$BUILD/upseal-certs is built"
	finish
fi
BIN="$(cd "$BUILD" && pwd)/upseal-certs"

# run CMD...: run it with stdout in $T/out, stderr in $T/err, status in RC.
# A sanitizer report on stderr is a failure of its own, whatever the status.
run() {
	"$@" >"$T/out" 2>"$T/err"
	RC=$?
	if grep -qE 'Sanitizer|runtime error:' "$T/err"; then
		notok "no sanitizer report from: ${*#"$BIN"}" "$(head -n 20 "$T/err")"
	fi
}

# expect NAME WANT_RC [STDERR_SUBSTRING]: check the last run.
expect() {
	local name=$1 want=$2 text=${3-}
	if [ "$RC" -ne "$want" ]; then
		notok "$name" "exit $RC, want $want" "stderr: $(head -c 600 "$T/err")"
	elif [ -n "$text" ] && ! grep -qF -- "$text" "$T/err"; then
		notok "$name" "stderr lacks: $text" "stderr: $(head -c 600 "$T/err")"
	else
		ok "$name"
	fi
}

# same NAME GOT WANT
same() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		notok "$1" "got:  $2" "want: $3"
	fi
}

# has NAME FILE TEXT: FILE contains TEXT.
has() {
	if grep -qF -- "$3" "$2"; then
		ok "$1"
	else
		notok "$1" "lacks: $3" "in: $(head -c 800 "$2")"
	fi
}

mode_of() {
	stat -c %a "$1" 2>/dev/null || echo missing
}

# The pin of a certificate's key, as openssl computes it.
ossl_pin() {
	echo "sha256//$(openssl x509 -in "$1" -pubkey -noout |
	    openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64)"
}

pin_of() {
	"$BIN" pin "$1" 2>"$T/pin.err" || echo "(pin failed: $(cat "$T/pin.err"))"
}

text_of() {
	openssl x509 -in "$1" -noout -text 2>&1
}

# --- help and version ---------------------------------------------------
run "$BIN" --help
expect "--help exits 0" 0
has "--help prints usage on stdout" "$T/out" "usage: upseal-certs new NAME"
run "$BIN" --version
same "--version" "$RC $(cat "$T/out")" "0 upseal-certs 0.1.0"

# --- new, self-signed -----------------------------------------------------
ID="$T/id"
run "$BIN" new proxy --dir "$ID"
expect "new writes an identity" 0 "wrote $ID/proxy.key (0600), $ID/proxy.crt"
PIN=$(cat "$T/out")
same "new prints exactly one line on stdout" "$(wc -l <"$T/out")" 1
if grep -Eqx 'sha256//[A-Za-z0-9+/]{43}=' "$T/out"; then
	ok "the line is a sha256// pin"
else
	notok "the line is a sha256// pin" "stdout: $(cat "$T/out")"
fi
same "--dir is created with mode 0700" "$(mode_of "$ID")" 700
same "the key has mode 0600" "$(mode_of "$ID/proxy.key")" 600
if [ -s "$ID/proxy.crt" ]; then ok "the certificate is written"; else notok "the certificate is written"; fi
same "pin of the .crt is the printed pin" "$(pin_of "$ID/proxy.crt")" "$PIN"
same "pin of the .key is the printed pin" "$(pin_of "$ID/proxy.key")" "$PIN"
same "openssl computes the same pin" "$(ossl_pin "$ID/proxy.crt")" "$PIN"

openssl x509 -in "$ID/proxy.crt" -outform der -out "$T/proxy.crt.der"
openssl pkey -in "$ID/proxy.key" -outform der -out "$T/proxy.key.der"
openssl pkcs8 -topk8 -nocrypt -in "$ID/proxy.key" -out "$T/proxy.p8"
openssl pkey -in "$ID/proxy.key" -pubout -out "$T/proxy.pub"
same "pin of a DER certificate" "$(pin_of "$T/proxy.crt.der")" "$PIN"
same "pin of a DER private key" "$(pin_of "$T/proxy.key.der")" "$PIN"
same "pin of a PKCS#8 private key" "$(pin_of "$T/proxy.p8")" "$PIN"
same "pin of a PEM public key" "$(pin_of "$T/proxy.pub")" "$PIN"

text_of "$ID/proxy.crt" >"$T/proxy.txt"
has "default subjectAltName is DNS:NAME" "$T/proxy.txt" "DNS:proxy"
has "self-signed: subject CN=NAME" "$T/proxy.txt" "Subject: CN = proxy"
has "self-signed: issuer is the subject" "$T/proxy.txt" "Issuer: CN = proxy"
has "the leaf is CA:FALSE" "$T/proxy.txt" "CA:FALSE"
has "the leaf is for TLS server and client" "$T/proxy.txt" \
    "TLS Web Server Authentication, TLS Web Client Authentication"
has "signed with SHA-256" "$T/proxy.txt" "Signature Algorithm: ecdsa-with-SHA256"
has "the key is P-256" "$T/proxy.txt" "NIST CURVE: P-256"
if openssl x509 -in "$ID/proxy.crt" -noout -checkend $((824 * 86400)) >/dev/null &&
    ! openssl x509 -in "$ID/proxy.crt" -noout -checkend $((826 * 86400)) >/dev/null; then
	ok "new is valid for 825 days by default"
else
	notok "new is valid for 825 days by default" "$(openssl x509 -in "$ID/proxy.crt" -noout -enddate)"
fi

# --- no overwrite without --force; atomic replace with it -----------------
cp "$ID/proxy.key" "$T/before.key"
cp "$ID/proxy.crt" "$T/before.crt"
run "$BIN" new proxy --dir "$ID"
expect "new refuses to replace an identity" 1 "$ID/proxy.key exists; use --force to replace it"
if [ ! -s "$T/out" ] && cmp -s "$ID/proxy.key" "$T/before.key" &&
    cmp -s "$ID/proxy.crt" "$T/before.crt"; then
	ok "a refusal changes no file and prints no pin"
else
	notok "a refusal changes no file and prints no pin" "stdout: $(cat "$T/out")"
fi
echo "not a certificate" >"$ID/half.crt"
run "$BIN" new half --dir "$ID"
expect "an existing .crt alone is refused too" 1 "$ID/half.crt exists; use --force to replace it"
if [ ! -e "$ID/half.key" ] && grep -q "not a certificate" "$ID/half.crt"; then
	ok "that refusal writes no .key"
else
	notok "that refusal writes no .key" "$(ls -la "$ID")"
fi
run "$BIN" new proxy --dir "$ID" --force
expect "--force replaces the identity" 0
NEWPIN=$(cat "$T/out")
if [ "$NEWPIN" != "$PIN" ] && [ "$(pin_of "$ID/proxy.crt")" = "$NEWPIN" ] &&
    [ "$(pin_of "$ID/proxy.key")" = "$NEWPIN" ]; then
	ok "the replaced identity has a new pin, key and certificate agree"
else
	notok "the replaced identity has a new pin, key and certificate agree" \
	    "old $PIN new $NEWPIN crt $(pin_of "$ID/proxy.crt") key $(pin_of "$ID/proxy.key")"
fi
same "the replaced key still has mode 0600" "$(mode_of "$ID/proxy.key")" 600
same "no temporary file is left behind" "$(ls -A "$ID" | grep -c tmp)" 0

# --- a CA and leaves signed by it -----------------------------------------
PKI="$T/pki"
run "$BIN" ca myca --dir "$PKI"
expect "ca makes a CA" 0 "wrote $PKI/myca.key (0600), $PKI/myca.crt"
same "ca prints the CA's pin" "$(cat "$T/out")" "$(ossl_pin "$PKI/myca.crt")"
same "the CA key has mode 0600" "$(mode_of "$PKI/myca.key")" 600
text_of "$PKI/myca.crt" >"$T/ca.txt"
has "the CA is CA:TRUE, pathlen 0" "$T/ca.txt" "CA:TRUE, pathlen:0"
if grep -A1 "Basic Constraints: critical" "$T/ca.txt" | grep -q "CA:TRUE" &&
    grep -A1 "Key Usage: critical" "$T/ca.txt" | grep -q "Certificate Sign, CRL Sign"; then
	ok "the CA's basicConstraints and keyUsage are critical"
else
	notok "the CA's basicConstraints and keyUsage are critical" "$(grep -A1 X509v3 "$T/ca.txt")"
fi
if openssl x509 -in "$PKI/myca.crt" -noout -checkend $((3649 * 86400)) >/dev/null &&
    ! openssl x509 -in "$PKI/myca.crt" -noout -checkend $((3651 * 86400)) >/dev/null; then
	ok "ca is valid for 3650 days by default"
else
	notok "ca is valid for 3650 days by default" "$(openssl x509 -in "$PKI/myca.crt" -noout -enddate)"
fi

run "$BIN" new srv --dir "$PKI" --ca "$PKI/myca" --dns srv.test --dns '*.alt.test' \
    --ip 127.0.0.1 --ip ::1 --days 30
expect "new --ca signs a leaf" 0
SRVPIN=$(cat "$T/out")
same "the signed leaf's pin" "$(ossl_pin "$PKI/srv.crt")" "$SRVPIN"
run openssl verify -CAfile "$PKI/myca.crt" "$PKI/srv.crt"
same "openssl verify accepts the leaf" "$RC $(cat "$T/out")" "0 $PKI/srv.crt: OK"
text_of "$PKI/srv.crt" >"$T/srv.txt"
has "the leaf carries every --dns and --ip" "$T/srv.txt" \
    "DNS:srv.test, DNS:*.alt.test, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"
has "the leaf's issuer is the CA's subject" "$T/srv.txt" "Issuer: CN = myca"
has "the signed leaf is CA:FALSE" "$T/srv.txt" "CA:FALSE"
has "the signed leaf is for TLS server and client" "$T/srv.txt" \
    "TLS Web Server Authentication, TLS Web Client Authentication"
if openssl x509 -in "$PKI/srv.crt" -noout -checkend $((29 * 86400)) >/dev/null &&
    ! openssl x509 -in "$PKI/srv.crt" -noout -checkend $((31 * 86400)) >/dev/null; then
	ok "--days sets the validity"
else
	notok "--days sets the validity" "$(openssl x509 -in "$PKI/srv.crt" -noout -enddate)"
fi

run "$BIN" new cli --dir "$PKI" --ca "$PKI/myca.crt"
expect "--ca also takes the .crt path" 0
run openssl verify -CAfile "$PKI/myca.crt" "$PKI/cli.crt"
same "openssl verify accepts the second leaf" "$RC $(cat "$T/out")" "0 $PKI/cli.crt: OK"

# A client identity from another CA, which the server must turn away.
run "$BIN" ca otherca --dir "$T/other"
run "$BIN" new rogue --dir "$T/other" --ca "$T/other/otherca"
expect "a leaf of a second CA" 0

# --- mutual TLS with these certificates -----------------------------------

# free_port: a port of the ephemeral range that nothing listens on.
free_port() {
	local i p
	for i in $(seq 1 50); do
		p=$((49152 + RANDOM % 16384))
		if command -v ss >/dev/null; then
			[ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] && { echo "$p"; return 0; }
		elif ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

stop_server() {
	if [ -n "$SERVER_PID" ]; then
		kill "$SERVER_PID" 2>/dev/null
		wait "$SERVER_PID" 2>/dev/null
		SERVER_PID=
	fi
}

# start_server LOG: openssl s_server requiring a client certificate from
# the CA, for one connection; sets PORT and SERVER_PID once it accepts.
start_server() {
	local log=$1 try i
	for try in 1 2 3 4 5; do
		PORT=$(free_port) || return 1
		openssl s_server -accept "127.0.0.1:$PORT" -naccept 1 -www \
		    -cert "$PKI/srv.crt" -key "$PKI/srv.key" -CAfile "$PKI/myca.crt" \
		    -Verify 1 -verify_return_error </dev/null >"$log" 2>&1 &
		SERVER_PID=$!
		for i in $(seq 1 200); do
			grep -q '^ACCEPT' "$log" && return 0
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.05
		done
		stop_server	# the port was taken after all, or it never came up
	done
	return 1
}

# client LOG ARGS...: one request through openssl s_client.
client() {
	local log=$1
	shift
	printf 'GET / HTTP/1.0\r\n\r\n' | timeout 20 openssl s_client \
	    -connect "127.0.0.1:$PORT" -CAfile "$PKI/myca.crt" -verify_return_error \
	    -verify_hostname srv.test -verify_ip 127.0.0.1 -ign_eof "$@" >"$log" 2>&1
}

# mtls NAME CLIENT_ARGS...: a handshake that must succeed both ways.
mtls() {
	local name=$1
	shift
	if ! start_server "$T/server.log"; then
		notok "$name" "openssl s_server did not start" "$(cat "$T/server.log")"
		return
	fi
	client "$T/client.log" "$@"
	local rc=$?
	stop_server
	if [ "$rc" -eq 0 ] && grep -q "Verify return code: 0 (ok)" "$T/client.log" &&
	    grep -q "HTTP/1.0 200 ok" "$T/client.log" &&
	    grep -q "Client certificate" "$T/client.log" &&
	    grep -q "depth=0 CN = cli" "$T/server.log"; then
		ok "$name"
	else
		notok "$name" "s_client exit $rc" "client: $(grep -iE 'verify|error|alert|cipher is' "$T/client.log" | head -n 8)" \
		    "server: $(head -n 12 "$T/server.log")"
	fi
}

# refused NAME CLIENT_ARGS...: a client the server must not serve.
refused() {
	local name=$1
	shift
	if ! start_server "$T/server.log"; then
		notok "$name" "openssl s_server did not start" "$(cat "$T/server.log")"
		return
	fi
	client "$T/client.log" "$@"
	stop_server
	if ! grep -q "HTTP/1.0 200" "$T/client.log" &&
	    grep -qiE "error|alert" "$T/server.log"; then
		ok "$name"
	else
		notok "$name" "server: $(head -n 12 "$T/server.log")"
	fi
}

mtls "mTLS (TLS 1.3): both sides verify the other's certificate" \
    -cert "$PKI/cli.crt" -key "$PKI/cli.key"
mtls "mTLS (TLS 1.2, ECDHE-ECDSA-AES128-GCM-SHA256) works too" \
    -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256 -cert "$PKI/cli.crt" -key "$PKI/cli.key"
refused "mTLS: a client without a certificate is refused"
refused "mTLS: a client certificate from another CA is refused" \
    -cert "$T/other/rogue.crt" -key "$T/other/rogue.key"

# --- --uri, --ca DIR and revoke (issue 12) --------------------------------
run "$BIN" new spiffe --dir "$PKI" --ca "$PKI" --dns s.proxies.internal \
    --uri spiffe://prod.example/ns/web/sa/api --days 3
expect "new --uri with --ca DIR (the one CA in it)" 0
has "--uri is a URI subjectAltName" <(text_of "$PKI/spiffe.crt") \
    "DNS:s.proxies.internal, URI:spiffe://prod.example/ns/web/sa/api"
if openssl x509 -in "$PKI/spiffe.crt" -noout -checkend $((2 * 86400)) >/dev/null &&
    ! openssl x509 -in "$PKI/spiffe.crt" -noout -checkend $((3 * 86400 + 60)) >/dev/null; then
	ok "--days 3 with --ca"
else
	notok "--days 3 with --ca" "$(openssl x509 -in "$PKI/spiffe.crt" -noout -enddate)"
fi
run "$BIN" new keep --dir "$PKI" --ca "$PKI/myca"
expect "a second leaf of the CA" 0
run "$BIN" revoke --ca "$PKI/myca"
expect "revoke without CERT writes an empty CRL" 0
same "revoke prints the CRL's path" "$(cat "$T/out")" "$PKI/myca.crl"
if openssl crl -in "$PKI/myca.crl" -CAfile "$PKI/myca.crt" -noout 2>"$T/ossl.err"; then
	ok "openssl verifies the CRL's signature"
else
	notok "openssl verifies the CRL's signature" "$(cat "$T/ossl.err")"
fi
run "$BIN" revoke --ca "$PKI" "$PKI/spiffe.crt"
expect "revoke a certificate" 0 "1 revoked (1 new)"
run openssl verify -crl_check -CAfile "$PKI/myca.crt" -CRLfile "$PKI/myca.crl" "$PKI/spiffe.crt"
if [ "$RC" -ne 0 ] && grep -q "certificate revoked" "$T/out" "$T/err"; then
	ok "openssl sees the certificate revoked"
else
	notok "openssl sees the certificate revoked" "$(cat "$T/out" "$T/err")"
fi
run openssl verify -crl_check -CAfile "$PKI/myca.crt" -CRLfile "$PKI/myca.crl" "$PKI/keep.crt"
expect "openssl: the other certificate is not revoked" 0
run "$BIN" revoke --ca "$PKI/myca" --days 2 "$PKI/keep.crt" "$PKI/spiffe.crt"
expect "revoke extends the CRL" 0 "2 revoked (1 new, some listed already)"
same "the CRL lists both serials" "$(openssl crl -in "$PKI/myca.crl" -noout -text | grep -c 'Serial Number')" 2
nu=$(openssl crl -in "$PKI/myca.crl" -noout -nextupdate | cut -d= -f2)
lu=$(openssl crl -in "$PKI/myca.crl" -noout -lastupdate | cut -d= -f2)
same "--days 2: nextUpdate two days (and 5 minutes) after thisUpdate" \
    $(( $(date -d "$nu" +%s) - $(date -d "$lu" +%s) )) $((2 * 86400 + 300))
run "$BIN" revoke --ca "$PKI/myca" "$T/other/otherca.crt"
expect "revoke refuses a certificate of another CA" 1 "not issued by this CA"
run "$BIN" revoke --ca "$T/other/otherca" "$PKI/keep.crt"
expect "revoke with another CA's key refuses" 1 "not issued by this CA"
cp "$PKI/myca.crl" "$T/other/otherca.crl"
run "$BIN" revoke --ca "$T/other/otherca"
expect "revoke refuses to extend another CA's CRL" 1 "not one CRL of this CA"
mkdir "$T/twoca" && "$BIN" ca a --dir "$T/twoca" >/dev/null 2>&1 && "$BIN" ca b --dir "$T/twoca" >/dev/null 2>&1
run "$BIN" new z --dir "$T/twoca" --ca "$T/twoca"
expect "--ca DIR with two CAs fails" 1 "more than one CA in the directory"

# --- bad usage: exit 2, nothing written -----------------------------------
mkdir "$T/scratch"
cd "$T/scratch" || exit 1
usage_case() {
	run "$BIN" "$@"
	if [ "$RC" -eq 2 ] && [ ! -s "$T/out" ] && grep -q "upseal-certs --help" "$T/err"; then
		ok "bad usage exits 2: ${*:-(no arguments)}"
	else
		notok "bad usage exits 2: ${*:-(no arguments)}" "exit $RC" "stderr: $(cat "$T/err")"
	fi
}
usage_case
usage_case frob
usage_case new
usage_case new .hidden
usage_case new a/b
usage_case new x --days 0
usage_case new x --days 36501
usage_case new x --days 12abc
usage_case new x --ip 1.2.3
usage_case new x --dns 'bad host'
usage_case new x --dir
usage_case new x --bogus
usage_case new x y
usage_case ca x --dns a.test
usage_case ca x --ca pki/myca
usage_case pin
usage_case pin a b
usage_case pin a --force
usage_case revoke x.crt
usage_case revoke --ca pki/myca --dns a.test
usage_case revoke --ca pki/myca --force
usage_case new x --uri nope
usage_case new x --uri 'spiffe://td/*'
same "bad usage writes nothing" "$(ls -A "$T/scratch")" ""
cd "$T" || exit 1

# --- runtime errors: exit 1, the file named -------------------------------
head -c 300 /dev/urandom >"$T/garbage.bin"
run "$BIN" pin "$T/garbage.bin"
expect "pin of a garbage file fails, naming it" 1 \
    "upseal-certs: $T/garbage.bin: not a certificate, private key or public key (PEM or DER)"
run "$BIN" pin "$T/missing.pem"
expect "pin of a missing file fails" 1 "$T/missing.pem: cannot read: No such file or directory"
openssl pkcs8 -topk8 -passout pass:secret -in "$ID/proxy.key" -out "$T/enc.key"
run "$BIN" pin "$T/enc.key"
expect "pin of an encrypted key says so" 1 "$T/enc.key: private key is encrypted"
run "$BIN" new x --dir "$T/nox" --ca "$ID/proxy"
expect "--ca with a certificate that is no CA fails" 1 "$ID/proxy.crt is not a CA certificate"
run "$BIN" new x --dir "$T/nox" --ca "$T/nothere"
expect "--ca with missing files fails" 1 "$T/nothere.crt: cannot read"
cp "$PKI/myca.key" "$T/other/mixed.key"
cp "$T/other/otherca.crt" "$T/other/mixed.crt"
run "$BIN" new y --dir "$T/nox" --ca "$T/other/mixed"
expect "--ca with a key of another certificate fails" 1 "is not the key of"
if [ ! -e "$T/nox" ]; then
	ok "a failed new creates neither --dir nor files"
else
	notok "a failed new creates neither --dir nor files" "$(ls -la "$T/nox")"
fi

finish
