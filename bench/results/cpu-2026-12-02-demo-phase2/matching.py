import numpy as np, sys
sys.path.insert(0, 'src')  # lpt: run from the directory holding the run dirs, with PYTHONPATH=<repo>/src
from lpt.analysis.matching import matching_stats
p=np.load('p1/predictions.npz')
for name in sys.argv[1:]:
    d=np.load(f'{name}/predictions.npz')
    y=d['labels']; a=p['preds']; b=d['preds']
    print(f'== {name}: changed predictions {np.mean(a!=b)*100:.2f}%  fixed {np.sum((a!=y)&(b==y))}  broken {np.sum((a==y)&(b!=y))}')
    # confusion of changed
    C=10
    m=np.zeros((C,C),int)
    for t,pr in zip(y[(a==y)&(b!=y)], b[(a==y)&(b!=y)]): m[t,pr]+=1
    print(' broken (true->pred) top:', sorted([(m[i,j],i,j) for i in range(C) for j in range(C) if m[i,j]],reverse=True)[:6])
    m=np.zeros((C,C),int)
    for t,pr in zip(y[(a!=y)&(b==y)], a[(a!=y)&(b==y)]): m[t,pr]+=1
    print(' fixed (true<-p1 pred) top:', sorted([(m[i,j],i,j) for i in range(C) for j in range(C) if m[i,j]],reverse=True)[:6])
    if 'groups' in d.files:
        g=d['groups']; import yaml; m_=yaml.safe_load(open(f"{name}/config.yaml"))["model"]["pool_size"]
        import json; pool=json.load(open(f'{name}/config.yaml')) if False else None
        s=matching_stats(g,y,10,max(m_,1))
        print(' usage_best',s['usage_best'].tolist(),'entropy_best %.2f'%s['entropy_best'] if s['entropy_best'] is not None else None,'unused_best',s['unused_best'])
        best=s['best']
        print(' per class: top group share (best match):', [(int(best[c].argmax()), round(float(best[c].max()),2)) for c in range(10)])
