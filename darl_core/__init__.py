"""DARL core: restoration inference, IQA rewards, difficulty, the RL trainer and the job worker."""
