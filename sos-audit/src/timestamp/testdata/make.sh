#!/bin/sh
# Regenerates the recorded RFC 3161 exchange used by the unit tests, the property tests and the
# `timestamp_response` fuzz target: a throwaway CA, an RSA TSA certificate with the critical
# extendedKeyUsage timeStamping, and one query and reply made by `openssl ts` (OpenSSL 3).
# The private keys are deleted: only public material is kept.
set -eu
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/ca.key" -out "$work/ca.crt" -subj "/CN=sos-audit fixture CA" -days 36500 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/tsa.key" 2>/dev/null
openssl req -new -key "$work/tsa.key" -subj "/CN=sos-audit fixture TSA" -out "$work/tsa.csr"
printf '[tsa]\nextendedKeyUsage = critical,timeStamping\nsubjectKeyIdentifier = hash\nbasicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n' > "$work/ext.cnf"
openssl x509 -req -in "$work/tsa.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -set_serial 7 -days 36500 \
    -extfile "$work/ext.cnf" -extensions tsa -out "$work/tsa.crt" 2>/dev/null
cat > "$work/tsa.cnf" <<CONF
[ tsa ]
default_tsa = fixture
[ fixture ]
dir = $work
serial = \$dir/serial
crypto_device = builtin
signer_cert = \$dir/tsa.crt
certs = \$dir/ca.crt
signer_key = \$dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
CONF
openssl x509 -in "$work/tsa.crt" -outform DER -out tsa.der
openssl ts -query -data message.txt -sha256 -cert -out query.tsq
openssl ts -query -in query.tsq -text | sed -n 's/^Nonce: 0x//p' > nonce.txt
openssl ts -reply -config "$work/tsa.cnf" -queryfile query.tsq -out reply.tsr 2>/dev/null
openssl ts -reply -in reply.tsr -token_out -out token.der 2>/dev/null
