#!/usr/bin/env python3
"""The markdown table of a gguf_side_by_side.sh run: one row per shape and format, llama.cpp's
pp512 / tg64 next to our prefill / decode tok/s, their ratios, and both peak RSS values.

    python3 docs/bench/side_by_side_table.py OUT_DIR [OUT_DIR ...]

Later directories override earlier ones for the same shape and format (a rerun of some rows).
A llama.cpp run that died (e.g. SIGILL) is left out of its row.
"""
import glob
import os
import re
import sys

def load(dirs):
    llama,ours={},{}
    for d in dirs:
        for f in glob.glob(d+"/llama-*.md"):
            name=os.path.basename(f)[6:-3]
            txt=open(f).read()
            pp=re.search(r"pp512\s*\|\s*([\d.]+)",txt); tg=re.search(r"tg64\s*\|\s*([\d.]+)",txt)
            t=open(f[:-3]+".time").read()
            rss=int(re.search(r"Maximum resident set size \(kbytes\): (\d+)",t).group(1))
            if pp and tg and "signal" not in t: llama[name]=(float(pp.group(1)),float(tg.group(1)),rss)
        for f in glob.glob(d+"/ours-*.md"):
            name=os.path.basename(f)[5:-3]
            row=[l for l in open(f) if l.startswith("| cpu | host")]
            if not row: continue
            cols=row[0].split("|")
            pp=float(cols[3].split()[0]); tg=float(cols[4].split()[0])
            t=open(f[:-3]+".time").read()
            rss=int(re.search(r"Maximum resident set size \(kbytes\): (\d+)",t).group(1))
            ours[name]=(pp,tg,rss)
    return llama,ours
shapes={"q35-08b":"Qwen3.5-0.8B","q3next-4L":"Qwen3-Next 4 layers, 8 experts"}
fmts={"f32":"F32","bf16":"BF16","q8_0":"Q8_0","q4_k_m":"Q4_K_M"}
llama,ours=load(sys.argv[1:])
print("| shape | format | llama.cpp pp512 / tg64 tok/s | ours prefill / decode tok/s | ratio prefill / decode | peak RSS llama.cpp / ours (ratio) |")
print("|---|---|---:|---:|---:|---:|")
for s in shapes:
    for f in fmts:
        k=f"{s}-{f}"
        if k not in ours: continue
        o=ours[k]
        if k in llama:
            l=llama[k]
            print(f"| {shapes[s]} | {fmts[f]} | {l[0]:.1f} / {l[1]:.2f} | {o[0]:.1f} / {o[1]:.2f} | {o[0]/l[0]:.2f}× / {o[1]/l[1]:.2f}× | {l[2]/2**20:.2f} / {o[2]/2**20:.2f} GiB ({o[2]/l[2]:.2f}×) |")
        else:
            print(f"| {shapes[s]} | {fmts[f]} | — | {o[0]:.1f} / {o[1]:.2f} | — | — / {o[2]/2**20:.2f} GiB |")
