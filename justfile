
# Two checkouts in alternating pairs on the same data: `just ab /tmp/a /tmp/b --tree /usr/share`.
ab *ARGS:
    {{py}} bench/ab.py {{ARGS}}
