import sys, json, torch, copy
sys.path.insert(0, 'src')  # lpt: run from the directory holding the run dirs, with PYTHONPATH=<repo>/src
torch.set_num_threads(1)
import lpt
from lpt.run.load import shot_metrics
from lpt.data import build_test_dataset
p1 = lpt.load_run('/tmp/sweep/p1'); b = lpt.load_run('/tmp/sweep/base')
test = build_test_dataset(p1.config.data)
cfg = p1.config
def ev(model, desc):
    m = shot_metrics(model, test, p1.train_counts, cfg, torch.device('cpu'), desc=desc)[0]
    r = {k: round(m[k], 2) for k in ('overall','many','medium','few')}
    r['per_class'] = [round(x,1) for x in m['per_class']]
    print(desc, json.dumps(r), flush=True)
# A: phase-1 prompt + phase-1 head + fresh untrained group prompts (phase 2 at step 0)
mA = copy.deepcopy(p1.model); mA.set_phase(2); mA.eval()
print('pool std', mA.pool.prompts.std().item())
ev(mA, 'A_p1_fresh_pool_step0')
# B: phase-1 forward (no group prompts) with the phase-2 (base) classifier: classifier drift alone
mB = copy.deepcopy(p1.model); mB.head.load_state_dict(b.model.head.state_dict()); mB.eval()
ev(mB, 'B_p1_features_base_head')
# C: base phase-2 features with the phase-1 classifier
mC = copy.deepcopy(b.model); mC.head.load_state_dict(p1.model.head.state_dict()); mC.eval()
ev(mC, 'C_base_features_p1_head')
# cos between heads
w1 = torch.nn.functional.normalize(p1.model.head.weight, dim=1); w2 = torch.nn.functional.normalize(b.model.head.weight, dim=1)
print('head cos per class', [round(x,4) for x in (w1*w2).sum(1).tolist()])
print('group prompt norm trained vs fresh', b.model.pool.prompts.norm(dim=(-1,-2)).mean().item(), mA.pool.prompts.norm(dim=(-1,-2)).mean().item(), 'shared', p1.model.shared_prompt.norm(dim=(-1,-2)).mean().item())
