# Helpers shared by the guest scripts: the console report format and check runners.
# Every result is one "@@RESULT STATUS name detail" line; /tmp/results feeds @@DONE.

uptime_s() { read u _ < /proc/uptime; echo $u; }
phase() { echo "@@PHASE $(uptime_s) $*"; }
elapsed() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.2f", b - a }'; }

# result STATUS NAME [DETAIL...]  (names are single tokens; details are one line)
result() {
    st=$1; nm=$2; shift 2
    d=$(echo "$*" | tr '\n\r' '  ' | cut -c1-400)
    echo "$st $nm" >> /tmp/results
    echo "@@RESULT $st $nm $d"
}

# chk NAME 'shell snippet' : PASS iff the snippet exits 0; its output is the FAIL detail.
chk() {
    nm=$1; t=$(uptime_s)
    if sh -c ". /lib.sh; $2" > /tmp/chk.out 2>&1; then
        result PASS "$nm" "($(elapsed $t)s)"
    else
        result FAIL "$nm" "rc=$? $(head -c 300 /tmp/chk.out)"
    fi
}

# must_fail NAME 'shell snippet' : PASS iff the snippet exits non-zero (an expected refusal).
must_fail() {
    nm=$1
    if sh -c ". /lib.sh; $2" > /tmp/chk.out 2>&1; then
        result FAIL "$nm" "succeeded but must be refused"
    else
        result PASS "$nm" "refused: $(head -c 120 /tmp/chk.out)"
    fi
}

md5() { md5sum "$@" | cut -c1-32; }
