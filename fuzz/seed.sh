#!/bin/sh
# Seeds the fuzz corpora from the engine's transcripts
# (crates/smtplink-engine/tests/transcripts/*.txt):
#   server_session  the client side of each transcript (C: and C~ lines), as
#                   one input, prefixed with the target's two control bytes
#                   (flags from the transcript's config; chunk seed 0 = whole,
#                   and a second copy fed in chunks)
#   client_session  the server side (S: lines), as a server's byte stream
#   command         each distinct C: line, as one command line
#   reply           the S: lines of each transcript
#   data            the B: lines (expected message bodies)
# The corpus directories are not kept in git; run this before fuzzing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
transcripts="$here/../crates/smtplink-engine/tests/transcripts"
corpus="$here/corpus"
mkdir -p "$corpus/server_session" "$corpus/client_session" "$corpus/command" \
    "$corpus/reply" "$corpus/data"

for t in "$transcripts"/*.txt; do
    name=$(basename "$t" .txt)
    perl -e '
        use strict; use warnings;
        my ($file, $corpus, $name) = @ARGV;
        open(my $in, "<:raw", $file) or die "$file: $!";
        # Rust-style escapes of C~ / B~ lines: \r \n \t \0 \\ \xHH \u{HEX}.
        sub unescape {
            my ($s) = @_;
            $s =~ s/\\(r|n|t|0|\\|x([0-9a-fA-F]{2})|u\{([0-9a-fA-F]+)\})/
                $1 eq "r" ? "\r" : $1 eq "n" ? "\n" : $1 eq "t" ? "\t" :
                $1 eq "0" ? "\0" : $1 eq "\\" ? "\\" :
                defined $2 ? chr(hex $2) : do { my $c = chr(hex $3); utf8::encode($c); $c }/ge;
            return $s;
        }
        my ($flags, $client, $server, $bodies) = (0, "", "", "");
        my %commands;
        while (my $line = <$in>) {
            $line =~ s/\n\z//;
            if ($line =~ /^#!\s*bare_line_endings\s*=\s*reject/) { $flags |= 1 }
            if ($line =~ /^#!\s*pipelining\s*=\s*false/) { $flags |= 2 }
            if ($line =~ /^#!\s*eightbitmime\s*=\s*false/) { $flags |= 8 }
            if ($line =~ /^#!\s*smtputf8\s*=\s*false/) { $flags |= 16 }
            if ($line eq "C:") { $client .= "\r\n" }
            elsif ($line =~ /^C: (.*)\z/s) { $client .= "$1\r\n"; $commands{$1} = 1 }
            elsif ($line =~ /^C~ (.*)\z/s) { $client .= unescape($1) }
            elsif ($line =~ /^S: (.*)\z/s && $1 !~ /\*\z/) { $server .= "$1\r\n" }
            elsif ($line eq "B:") { $bodies .= "\r\n" }
            elsif ($line =~ /^B: (.*)\z/s) { $bodies .= "$1\r\n" }
            elsif ($line =~ /^B~ (.*)\z/s) { $bodies .= unescape($1) }
        }
        sub put { my ($path, $bytes) = @_;
            open(my $out, ">:raw", $path) or die "$path: $!"; print $out $bytes; close $out }
        put("$corpus/server_session/$name", chr($flags) . "\0" . $client);
        put("$corpus/server_session/$name.chunked", chr($flags) . "\x07" . $client);
        put("$corpus/client_session/$name", "\0\0" . $server);
        put("$corpus/reply/$name", "\0" . $server);
        put("$corpus/data/$name", "\0" . $bodies) if length $bodies;
        my $i = 0;
        for my $c (sort keys %commands) {
            put(sprintf("%s/command/%s.%03d", $corpus, $name, $i++), "\x1f" . $c);
        }
    ' "$t" "$corpus" "$name"
done
echo "seeded: $(ls "$corpus/server_session" | wc -l) server_session," \
    "$(ls "$corpus/command" | wc -l) command, $(ls "$corpus/reply" | wc -l) reply," \
    "$(ls "$corpus/data" | wc -l) data, $(ls "$corpus/client_session" | wc -l) client_session inputs"
